//! Separable fixed-point resampling that reproduces PIL's and torch's uint8 antialias kernels.
//!
//! Both are two passes (horizontal first, u8 in between) of normalised filter taps stretched by
//! the downscale factor; they differ only in the cubic's formula and the weights' fixed-point
//! precision (PIL: 22 bits in i32; torch: the most bits that keep i16 weights from overflowing).

use image::RgbImage;

use super::ResizeBackend;

/// Resizes an RGB image to `(out_h, out_w)` with antialiased bicubic resampling, reproducing the
/// given backend.
pub fn resize_bicubic(img: &RgbImage, out_h: u32, out_w: u32, backend: ResizeBackend) -> RgbImage {
    let kernel = match backend {
        ResizeBackend::Pil => Kernel::CubicPil,
        ResizeBackend::Torchvision => Kernel::CubicTorch,
    };
    resize_separable(img, out_h, out_w, kernel, backend)
}

/// `PIL.Image.resize((out_w, out_h), Image.LANCZOS)` bit for bit (the downscale PRISM applies
/// to discriminator images before the processor).
pub fn resize_lanczos_pil(img: &RgbImage, out_h: u32, out_w: u32) -> RgbImage {
    resize_separable(img, out_h, out_w, Kernel::LanczosPil, ResizeBackend::Pil)
}

fn resize_separable(
    img: &RgbImage,
    out_h: u32,
    out_w: u32,
    kernel: Kernel,
    backend: ResizeBackend,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let mut buf = img.as_raw().clone();
    let (mut cur_w, cur_h) = (in_w as usize, in_h as usize);
    // Horizontal pass first (both PIL and torch's uint8 kernel), u8 in between.
    if out_w != in_w {
        let k = axis_coeffs_with(in_w as usize, out_w as usize, kernel, backend);
        buf = resample_horizontal(&buf, cur_w, cur_h, &k);
        cur_w = out_w as usize;
    }
    if out_h != in_h {
        let k = axis_coeffs_with(in_h as usize, out_h as usize, kernel, backend);
        buf = resample_vertical(&buf, cur_w, &k);
    }
    RgbImage::from_raw(out_w, out_h, buf).expect("resampled buffer has the output size")
}

/// Fixed-point filter taps of one axis.
struct AxisCoeffs {
    /// Per output index: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Taps per output index (padded to `ksize`).
    ksize: usize,
    coeffs: Vec<i32>,
    /// Fraction bits of `coeffs`.
    precision: u32,
}

/// Keys cubic convolution with a = -0.5, as PIL writes it.
fn cubic_pil(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Keys cubic convolution with a = -0.5, as torch's antialias kernel writes it.
fn cubic_torch(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// The resampling kernels: a function of the (scaled) distance and its support radius.
#[derive(Clone, Copy)]
enum Kernel {
    CubicPil,
    CubicTorch,
    LanczosPil,
}

impl Kernel {
    fn eval(self, x: f64) -> f64 {
        match self {
            Kernel::CubicPil => cubic_pil(x),
            Kernel::CubicTorch => cubic_torch(x),
            Kernel::LanczosPil => lanczos_pil(x),
        }
    }
    fn support(self) -> f64 {
        match self {
            Kernel::CubicPil | Kernel::CubicTorch => 2.0,
            Kernel::LanczosPil => 3.0,
        }
    }
}

/// PIL's Lanczos-3: `sinc(x) * sinc(x / 3)` on [-3, 3).
fn lanczos_pil(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Filter taps for one axis; `backend` decides the fixed-point precision rule.
fn axis_coeffs_with(
    in_size: usize,
    out_size: usize,
    kernel: Kernel,
    backend: ResizeBackend,
) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = kernel.support() * filterscale;
    let inv = 1.0 / filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let filter = |x: f64| kernel.eval(x);
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f64; out_size * ksize];
    let mut wt_max = 0.0f64;
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // C casts truncate toward zero; the clamp at 0 makes that irrelevant for negatives.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let w = &mut weights[i * ksize..i * ksize + n];
        let mut total = 0.0;
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = filter((j as f64 + xmin as f64 - center + 0.5) * inv);
            total += *wj;
        }
        if total != 0.0 {
            for wj in w.iter_mut() {
                *wj /= total;
                wt_max = wt_max.max(*wj);
            }
        }
        bounds.push((xmin, n));
    }
    let precision = match backend {
        // PIL: PRECISION_BITS = 32 - 8 - 2
        ResizeBackend::Pil => 22,
        // torch: the largest precision whose int16 weights cannot overflow
        ResizeBackend::Torchvision => {
            let mut p = 0u32;
            while p < 22 {
                let next = (0.5 + wt_max * (1u64 << (p + 1)) as f64) as i64;
                if next >= 1 << 15 {
                    break;
                }
                p += 1;
            }
            p
        }
    };
    let one = (1u64 << precision) as f64;
    let coeffs = weights
        .iter()
        .map(|&w| {
            let v = w * one;
            // round half away from zero, as (int)(v ± 0.5)
            if v < 0.0 {
                (v - 0.5) as i32
            } else {
                (v + 0.5) as i32
            }
        })
        .collect();
    AxisCoeffs {
        bounds,
        ksize,
        coeffs,
        precision,
    }
}

/// `1 << (precision - 1)`: adds one half before the final shift (0 without fraction bits).
fn rounding_half(precision: u32) -> i64 {
    match precision {
        0 => 0,
        p => 1i64 << (p - 1).min(62),
    }
}

#[inline]
fn clip8(acc: i64, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Resamples rows: `(h, in_w, 3)` → `(h, out_w, 3)`.
fn resample_horizontal(src: &[u8], in_w: usize, h: usize, k: &AxisCoeffs) -> Vec<u8> {
    let out_w = k.bounds.len();
    let mut out = vec![0u8; h * out_w * 3];
    let half = rounding_half(k.precision);
    for y in 0..h {
        let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (x, &(xmin, n)) in k.bounds.iter().enumerate() {
            let taps = &k.coeffs[x * k.ksize..x * k.ksize + n];
            let mut acc = [half; 3];
            for (j, &c) in taps.iter().enumerate() {
                let px = &row[(xmin + j) * 3..(xmin + j) * 3 + 3];
                for ch in 0..3 {
                    acc[ch] += px[ch] as i64 * c as i64;
                }
            }
            let o = (y * out_w + x) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(acc[ch], k.precision);
            }
        }
    }
    out
}

/// Resamples columns: `(in_h, w, 3)` → `(out_h, w, 3)`.
fn resample_vertical(src: &[u8], w: usize, k: &AxisCoeffs) -> Vec<u8> {
    let out_h = k.bounds.len();
    let stride = w * 3;
    let mut out = vec![0u8; out_h * stride];
    let half = rounding_half(k.precision);
    let mut acc = vec![0i64; stride];
    for (y, &(ymin, n)) in k.bounds.iter().enumerate() {
        acc.fill(half);
        let taps = &k.coeffs[y * k.ksize..y * k.ksize + n];
        for (j, &c) in taps.iter().enumerate() {
            let row = &src[(ymin + j) * stride..(ymin + j + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as i64 * c as i64;
            }
        }
        for (o, &a) in out[y * stride..(y + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a, k.precision);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_keeps_pixels() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        for b in [ResizeBackend::Pil, ResizeBackend::Torchvision] {
            // a same-size pass is an identity for both kernels (weights 1, 0, 0, ...)
            let kernel = if b == ResizeBackend::Pil {
                Kernel::CubicPil
            } else {
                Kernel::CubicTorch
            };
            let k = axis_coeffs_with(5, 5, kernel, b);
            let out = resample_horizontal(img.as_raw(), 5, 4, &k);
            assert_eq!(&out, img.as_raw());
        }
    }
}
