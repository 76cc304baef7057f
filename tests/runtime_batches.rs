//! The embedding runtime on mixed layouts: a batch of groups with their own layouts in one
//! submission equals the groups one by one, and a file is compressed on the layout of its
//! metadata. Fresh random inputs each run (seed printed), outputs poisoned with NaN.

mod common;

use common::runtime::{assert_same, checked, device_buffer, odd};
use common::{assert_reference, features, gpu, grid, seeded, weights};
use half::bf16;
use metacompress::{
    Compressor, Dtype, Features, GpuTokens, Layout, Options, Precision, Scope, Tokens,
};
use rand_chacha::ChaCha8Rng;

/// Three layouts: a square grid (the largest), two anyres grids with loose tokens, a small
/// square.
fn mixed_groups(rng: &mut ChaCha8Rng, d: usize) -> Vec<(Features, Layout)> {
    let a = odd(rng, 7..11);
    let square = Layout::square(a * a).unwrap();
    let anyres = Layout::new(
        3 + 16 + 3 + 20 + 2,
        vec![grid(3, 4, 4), grid(3 + 16 + 3, 4, 5)],
    )
    .unwrap();
    let small = Layout::square(9).unwrap();
    [(2, square), (1, anyres), (3, small)]
        .into_iter()
        .map(|(batch, layout)| (features(rng, batch, layout.tokens(), d), layout))
        .collect()
}
#[test]
fn a_mixed_layout_batch_equals_the_groups_one_by_one() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("mixed_batch");
    let d = odd(&mut rng, 9..21);
    let weights = weights(&mut rng, d, 6, Some((4, 4)));
    let groups = mixed_groups(&mut rng, d);
    let compressor =
        Compressor::on_context(weights.clone(), context.clone(), Precision::F32).unwrap();
    for scope in [Scope::Image, Scope::Grid] {
        let options = Options {
            scope,
            ..checked(0.25)
        };
        // The middle group from a device buffer.
        let buffer = device_buffer(&context, bytemuck::cast_slice(groups[1].0.values()));
        let (b, n) = (groups[1].0.batch(), groups[1].0.tokens());
        let batch: Vec<(Tokens, &Layout)> = groups
            .iter()
            .enumerate()
            .map(|(i, (features, layout))| {
                let tokens = if i == 1 {
                    GpuTokens::new(&buffer, Dtype::F32, b, n, d).into()
                } else {
                    features.into()
                };
                (tokens, layout)
            })
            .collect();
        let together = compressor.compress_batch(&batch, &options).unwrap();
        assert_eq!(together.len(), groups.len());
        for (i, ((features, layout), out)) in groups.iter().zip(&together).enumerate() {
            let what = format!("seed {seed}: {scope:?} group {i}");
            let alone = compressor.compress(features, layout, &options).unwrap();
            assert_same(out, &alone, &what);
            assert_reference(out, features, &weights, layout, &options, 1e-4, &what);
        }
        // The same batch through the async form, and cut into chunks.
        let later = pollster::block_on(compressor.compress_async(&batch, &options).unwrap());
        // Room for one image of the largest group (the first, cut into chunks of one), and
        // the copy kernel's window.
        let largest = groups
            .iter()
            .map(|(_, layout)| {
                let (n, m) = (layout.tokens(), layout.queries(options.keep).count);
                4 * [n * d, m * n, m * d, n * 6].into_iter().max().unwrap()
            })
            .max()
            .unwrap();
        let chunked = Options {
            max_binding_bytes: Some((largest + 512) as u64),
            ..options
        };
        let cut = compressor.compress_batch(&batch, &chunked).unwrap();
        for (i, ((out, later), cut)) in together.iter().zip(&later.unwrap()).zip(&cut).enumerate() {
            assert_same(later, out, &format!("seed {seed}: async group {i}"));
            assert_same(cut, out, &format!("seed {seed}: chunked group {i}"));
        }
    }
}

#[test]
fn a_safetensors_file_is_compressed_on_the_layout_of_its_metadata() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("file_input");
    let d = odd(&mut rng, 9..21);
    let weights = weights(&mut rng, d, 6, Some((4, 4)));
    let (features, layout) = mixed_groups(&mut rng, d).swap_remove(1);
    let folder = std::env::temp_dir().join(format!("metacompress-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("anyres.safetensors");
    metacompress::files::write_input(
        &path,
        &features,
        true,
        Dtype::BF16,
        Some(&layout.to_json()),
        None,
    )
    .unwrap();
    let compressor = Compressor::on_context(weights, context, Precision::F32).unwrap();
    let options = checked(0.25);
    let from_file = compressor.compress_file(&path, &options).unwrap();
    // The file holds bf16: the same values widened, on the layout of its metadata.
    let widened: Vec<f32> = features
        .values()
        .iter()
        .map(|&x| bf16::from_f32(x).to_f32())
        .collect();
    let widened = Features::new(features.batch(), features.tokens(), d, widened).unwrap();
    let expected = compressor.compress(&widened, &layout, &options).unwrap();
    assert_same(&from_file, &expected, &format!("seed {seed}: file"));
    std::fs::remove_dir_all(&folder).unwrap();
}
