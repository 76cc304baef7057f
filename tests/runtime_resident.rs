//! The embedding runtime's tokens where they lie: GPU-resident input and output against host
//! calls, host tokens in f16 and bf16 as their values, and a buffer of another device refused
//! as a GPU error. Fresh random inputs each run (seed printed), outputs poisoned with NaN.

mod common;

use common::runtime::{assert_same, checked, device_buffer, odd, square_case};
use common::{assert_reference, features, gpu, seeded, weights};
use half::{bf16, f16};
use metacompress::gpu::GpuContext;
use metacompress::{
    Compressor, Dtype, Error, Features, GpuTokens, HostTokens, Layout, Options, Precision,
};
#[test]
fn gpu_resident_calls_give_the_tokens_of_host_calls() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("gpu_resident");
    let batch = 3;
    let (n, d, weights, features, layout) = square_case(&mut rng, batch, (4, 5));
    let options = checked(0.3);
    let mut precisions = vec![Precision::F32];
    if context.has_f16() {
        precisions.push(Precision::F16);
    }
    for precision in precisions {
        let compressor =
            Compressor::on_context(weights.clone(), context.clone(), precision).unwrap();
        let values = features.values();
        // Each source dtype at an aligned and at a misaligned offset (in elements).
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for lead in [0usize, 3] {
                let what = format!("seed {seed}: {precision:?} from {dtype:?} after {lead}");
                let (host, bytes) = match dtype {
                    Dtype::F32 => (values.to_vec(), bytemuck::cast_slice(values).to_vec()),
                    Dtype::F16 => {
                        let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                        (
                            v.iter().map(|x| x.to_f32()).collect(),
                            bytemuck::cast_slice(&v).to_vec(),
                        )
                    }
                    Dtype::BF16 => {
                        let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                        (
                            v.iter().map(|x| x.to_f32()).collect(),
                            bytemuck::cast_slice(&v).to_vec(),
                        )
                    }
                };
                let mut padded = vec![0xAB; lead * dtype.size()];
                padded.extend(&bytes);
                padded.resize(padded.len().next_multiple_of(4), 0);
                let buffer = device_buffer(&context, &padded);
                let tokens = GpuTokens::new(&buffer, dtype, batch, n, d)
                    .at_offset((lead * dtype.size()) as u64);
                let resident = compressor
                    .compress_on_gpu(tokens, &layout, &options)
                    .unwrap();
                assert_eq!(resident.dtype, precision.elem().dtype());
                let from_gpu = compressor.read_back(&resident).unwrap();
                let host = Features::new(batch, n, d, host).unwrap();
                let from_host = compressor.compress(&host, &layout, &options).unwrap();
                assert_same(&from_gpu, &from_host, &what);
                let tolerance = if precision == Precision::F16 {
                    1e-2
                } else {
                    1e-4
                };
                assert_reference(
                    &from_gpu, &host, &weights, &layout, &options, tolerance, &what,
                );
            }
        }
    }
}

#[test]
fn host_tokens_in_f16_and_bf16_are_compressed_as_their_values() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("host_dtypes");
    let (n, d) = (49, odd(&mut rng, 9..19));
    let weights = weights(&mut rng, d, 5, None);
    let features = features(&mut rng, 2, n, d);
    let layout = Layout::square(n).unwrap();
    let options = checked(0.2);
    let compressor = Compressor::on_context(weights.clone(), context, Precision::F32).unwrap();
    let halves: Vec<f16> = features
        .values()
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let brains: Vec<bf16> = features
        .values()
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    for (tokens, widened) in [
        (
            HostTokens::new(halves.as_slice(), 2, n, d).unwrap(),
            halves.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
        ),
        (
            HostTokens::new(brains.as_slice(), 2, n, d).unwrap(),
            brains.iter().map(|x| x.to_f32()).collect(),
        ),
    ] {
        let what = format!("seed {seed}: {:?}", tokens.values().dtype());
        let out = compressor
            .compress_tokens(tokens.into(), &layout, &options)
            .unwrap();
        let widened = Features::new(2, n, d, widened).unwrap();
        let expected = compressor.compress(&widened, &layout, &options).unwrap();
        assert_same(&out, &expected, &what);
    }
    // A NaN in an f16 slice is named by its index.
    let mut bad = halves.clone();
    bad[n * d + 2 * d + 1] = f16::NAN;
    let error = HostTokens::new(bad.as_slice(), 2, n, d).unwrap_err();
    assert_eq!(
        error.to_string(),
        "features[1, 2, 1] is NaN; expected finite values"
    );
}

#[test]
fn a_buffer_from_another_device_is_a_gpu_error_not_a_panic() {
    let Some(context) = gpu() else { return };
    let (_, mut rng) = seeded("other_device");
    let (n, d) = (16, 7);
    let weights = weights(&mut rng, d, 3, None);
    let layout = Layout::square(n).unwrap();
    let compressor = Compressor::on_context(weights, context.clone(), Precision::F32).unwrap();
    let other =
        GpuContext::open(metacompress::gpu::GpuApi::Any, Some(&context.adapter.name)).unwrap();
    let features = features(&mut rng, 1, n, d);
    let foreign = device_buffer(&other, bytemuck::cast_slice(features.values()));
    let error = compressor
        .compress_on_gpu(
            GpuTokens::new(&foreign, Dtype::F32, 1, n, d),
            &layout,
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(error, Error::Gpu(_)), "{error}");
    // The compressor goes on working.
    compressor
        .compress(&features, &layout, &Options::default())
        .unwrap();
}
