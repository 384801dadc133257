//! Rendering throughput of the procedural task: draws N scenes (mixed difficulty), renders each
//! to RGB and encodes it as PNG, and prints the rates. Usage:
//! `cargo bench --bench synth -- [N]` (default N = 2000). Numbers go to BENCHMARKS.md; nothing
//! here is asserted.

use std::hint::black_box;
use std::time::Instant;

use prism::data::synth::render::{encode_png, render};
use prism::data::synth::scene::sample_scene;
use prism::data::synth::stream;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let scenes: Vec<_> = (0..n)
        .map(|i| {
            let mut rng = stream(1, "bench", i as u64);
            sample_scene(&mut rng, (i % 3) as u8 + 1)
        })
        .collect();

    let start = Instant::now();
    let images: Vec<_> = scenes.iter().map(render).collect();
    let render_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut bytes = 0usize;
    for img in &images {
        match encode_png(img) {
            Ok(png) => bytes += black_box(png).len(),
            Err(e) => {
                eprintln!("PNG encoding failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let encode_s = start.elapsed().as_secs_f64();

    let total = render_s + encode_s;
    println!("images={n}");
    println!("render_images_per_second={:.1}", n as f64 / render_s);
    println!("png_encode_images_per_second={:.1}", n as f64 / encode_s);
    println!("mean_png_bytes={:.0}", bytes as f64 / n as f64);
    println!("images_per_second={:.1}", n as f64 / total);
}
