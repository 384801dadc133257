//! Rendering a [`Scene`] to an RGB image and to PNG bytes.
//!
//! Rendering is a pure function of the scene: no randomness, no clock, so the same scene gives
//! byte-identical PNGs. Text uses DejaVu Sans, embedded in the binary (assets/DejaVuSans.ttf,
//! licence in assets/DejaVuSans-LICENSE.txt).

use std::sync::OnceLock;

use ab_glyph::{FontRef, PxScale};
use image::{ImageEncoder, Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_filled_rect_mut, draw_line_segment_mut, draw_polygon_mut,
    draw_text_mut, text_size,
};
use imageproc::point::Point;
use imageproc::rect::Rect;

use super::scene::{GRID, Label, Object, Scene, Shape, Size};

/// Width and height of every rendered image, in pixels. Small on purpose: a tiny policy on CPU
/// must be able to encode it (160 px = 10×10 patches of 16 px).
pub const IMAGE_SIZE: u32 = 160;

const BACKGROUND: Rgb<u8> = Rgb([246, 245, 240]);
const GRID_LINE: Rgb<u8> = Rgb([222, 220, 212]);

static FONT_BYTES: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        // The bytes are compiled in and checked by a unit test, so this cannot fail at run time.
        FontRef::try_from_slice(FONT_BYTES).expect("embedded DejaVuSans.ttf parses")
    })
}

/// Side of one grid cell in pixels.
fn cell_size() -> f32 {
    IMAGE_SIZE as f32 / f32::from(GRID)
}

/// Radius of the circle that bounds an object of this size.
fn radius(size: Size) -> f32 {
    match size {
        Size::Small => 12.0,
        Size::Large => 21.0,
    }
}

/// Renders `scene` on a light background with faint grid lines.
pub fn render(scene: &Scene) -> RgbImage {
    let mut img = RgbImage::from_pixel(IMAGE_SIZE, IMAGE_SIZE, BACKGROUND);
    let cs = cell_size();
    for k in 1..GRID {
        let p = (f32::from(k) * cs).round();
        let end = IMAGE_SIZE as f32 - 1.0;
        draw_line_segment_mut(&mut img, (p, 0.0), (p, end), GRID_LINE);
        draw_line_segment_mut(&mut img, (0.0, p), (end, p), GRID_LINE);
    }
    for o in &scene.objects {
        draw_object(&mut img, o);
    }
    img
}

/// Centre of an object in pixels.
fn centre(o: &Object) -> (f32, f32) {
    let cs = cell_size();
    (
        (f32::from(o.cell.col) + 0.5) * cs + f32::from(o.offset.0),
        (f32::from(o.cell.row) + 0.5) * cs + f32::from(o.offset.1),
    )
}

fn regular_polygon(cx: f32, cy: f32, r: f32, n: usize, phase: f32) -> Vec<Point<i32>> {
    (0..n)
        .map(|k| {
            let a = phase + std::f32::consts::TAU * k as f32 / n as f32;
            Point::new(
                (cx + r * a.cos()).round() as i32,
                (cy + r * a.sin()).round() as i32,
            )
        })
        .collect()
}

fn star(cx: f32, cy: f32, r: f32) -> Vec<Point<i32>> {
    let inner = r * 0.45;
    (0..10)
        .map(|k| {
            let rr = if k % 2 == 0 { r } else { inner };
            let a = -std::f32::consts::FRAC_PI_2 + std::f32::consts::PI * k as f32 / 5.0;
            Point::new(
                (cx + rr * a.cos()).round() as i32,
                (cy + rr * a.sin()).round() as i32,
            )
        })
        .collect()
}

fn draw_object(img: &mut RgbImage, o: &Object) {
    let (cx, cy) = centre(o);
    let r = radius(o.size);
    let fill = Rgb(o.colour.rgb());
    match o.shape {
        Shape::Circle => {
            draw_filled_circle_mut(img, (cx.round() as i32, cy.round() as i32), r as i32, fill)
        }
        Shape::Square => {
            let side = (r * 1.6).round();
            let x0 = (cx - side / 2.0).round() as i32;
            let y0 = (cy - side / 2.0).round() as i32;
            draw_filled_rect_mut(
                img,
                Rect::at(x0, y0).of_size(side as u32, side as u32),
                fill,
            );
        }
        Shape::Triangle => {
            // Centroid at the object centre, apex up; shifted down a little so the visual mass
            // sits in the middle of the cell.
            let pts = regular_polygon(cx, cy + r * 0.15, r * 1.1, 3, -std::f32::consts::FRAC_PI_2);
            draw_polygon_mut(img, &pts, fill);
        }
        Shape::Diamond => {
            let pts = regular_polygon(cx, cy, r * 1.05, 4, -std::f32::consts::FRAC_PI_2);
            draw_polygon_mut(img, &pts, fill);
        }
        Shape::Star => {
            let pts = star(cx, cy, r * 1.15);
            draw_polygon_mut(img, &pts, fill);
        }
    }
    if let Some(label) = &o.label {
        draw_label(img, o, label, cx, cy);
    }
}

fn draw_label(img: &mut RgbImage, o: &Object, label: &Label, cx: f32, cy: f32) {
    let scale = PxScale::from(match label {
        Label::Digit(_) => 18.0,
        Label::Word(_) => 13.0,
    });
    let text = label.text();
    let (w, h) = text_size(scale, font(), &text);
    let colour = if o.colour.wants_dark_text() {
        Rgb([20, 20, 20])
    } else {
        Rgb([255, 255, 255])
    };
    // Triangles have their visual centre lower than the bounding circle's centre.
    let dy = if o.shape == Shape::Triangle { 4.0 } else { 0.0 };
    let x = (cx - w as f32 / 2.0).round() as i32;
    let y = (cy + dy - h as f32 / 2.0).round() as i32;
    draw_text_mut(img, colour, x, y, scale, font(), &text);
}

/// Encodes an image as PNG. Deterministic: the encoder writes no timestamps or other metadata.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::with_capacity(8 * 1024);
    image::codecs::png::PngEncoder::new(&mut out).write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

/// Renders and encodes in one go.
pub fn render_png(scene: &Scene) -> Result<Vec<u8>, image::ImageError> {
    encode_png(&render(scene))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::scene::{Cell, Colour};

    fn one(shape: Shape, colour: Colour, label: Option<Label>) -> Scene {
        Scene {
            objects: vec![Object {
                shape,
                colour,
                size: Size::Large,
                cell: Cell { row: 1, col: 1 },
                label,
                offset: (0, 0),
            }],
        }
    }

    #[test]
    fn embedded_font_parses() {
        assert!(FontRef::try_from_slice(FONT_BYTES).is_ok());
    }

    #[test]
    fn object_is_drawn_in_its_cell_with_its_colour() {
        for &shape in Shape::ALL {
            let img = render(&one(shape, Colour::Blue, None));
            let c = (IMAGE_SIZE / 2, IMAGE_SIZE / 2);
            assert_eq!(
                img.get_pixel(c.0, c.1).0,
                Colour::Blue.rgb(),
                "{shape} centre"
            );
            // A corner cell stays background.
            assert_eq!(*img.get_pixel(10, 10), BACKGROUND);
        }
    }

    #[test]
    fn label_changes_pixels_and_rendering_is_deterministic() {
        let plain = render(&one(Shape::Circle, Colour::Red, None));
        let seven = render(&one(Shape::Circle, Colour::Red, Some(Label::Digit(7))));
        let one_ = render(&one(Shape::Circle, Colour::Red, Some(Label::Digit(1))));
        assert_ne!(plain, seven);
        assert_ne!(seven, one_);
        let a = render_png(&one(Shape::Star, Colour::Yellow, Some(Label::Digit(3)))).unwrap();
        let b = render_png(&one(Shape::Star, Colour::Yellow, Some(Label::Digit(3)))).unwrap();
        assert_eq!(a, b);
        let decoded = image::load_from_memory(&a).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
    }
}
