//! What the runtime tests share: options that poison every output, buffers on a device,
//! results compared bit for bit, and small random cases.

use metacompress::gpu::GpuContext;
use metacompress::{Compressed, Features, Keep, Layout, Options, PMeta};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use wgpu::util::DeviceExt;

use super::{features, weights};

/// Options that hand `P` back and poison every output.
pub fn checked(keep: f64) -> Options {
    Options {
        keep: Keep::new(keep).unwrap(),
        save_projection: true,
        poison: true,
        ..Options::default()
    }
}

/// A storage buffer on `context`'s device holding `bytes`.
pub fn device_buffer(context: &GpuContext, bytes: &[u8]) -> wgpu::Buffer {
    context
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("application features"),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        })
}

/// Asserts two results hold the same bits.
pub fn assert_same(a: &Compressed, b: &Compressed, what: &str) {
    assert_eq!(a.queries.count, b.queries.count, "{what}: m");
    assert_eq!(a.batch, b.batch, "{what}: batch");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.tokens), bits(&b.tokens), "{what}: tokens differ");
    assert_eq!(
        a.projection.as_deref().map(bits),
        b.projection.as_deref().map(bits),
        "{what}: P differs"
    );
    assert!(a.tokens.iter().all(|v| v.is_finite()), "{what}: NaN left");
}

/// Checks `out` against the float64 reference on `features`.
pub fn odd(rng: &mut ChaCha8Rng, range: std::ops::Range<usize>) -> usize {
    rng.random_range(range) | 1
}

/// `batch` random images on one square grid of odd side, odd width, 6 channels.
pub fn square_case(
    rng: &mut ChaCha8Rng,
    batch: usize,
    table: (usize, usize),
) -> (usize, usize, PMeta, Features, Layout) {
    let (side, d) = (odd(rng, 5..9), odd(rng, 9..21));
    let n = side * side;
    let weights = weights(rng, d, 6, Some(table));
    let features = features(rng, batch, n, d);
    (n, d, weights, features, Layout::square(n).unwrap())
}
