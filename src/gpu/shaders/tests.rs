//! Every shader, in every variant the host builds, parses and validates with naga and
//! translates to SPIR-V, MSL, HLSL and GLSL: the cheap check that the kernels can run on
//! Vulkan, Metal, DX12 and GL, whatever adapter this machine has.

use super::{KernelSources, ShaderSource};
use crate::gpu::kernels::matmul::Kernel;
use crate::options::Precision;
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn translate_everywhere(source: &ShaderSource, precision: Precision) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(&source.code)
        .map_err(|e| format!("parse: {}", e.emit_to_string(&source.code)))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("validate: {}", e.emit_to_string(&source.code)))?;
    // The host uses the overrides' defaults; the backends need them resolved.
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        None,
        &naga::back::PipelineConstants::default(),
    )
    .map_err(|e| format!("overrides: {e}"))?;
    // MSL and HLSL get every entry point at once; GLSL takes one at a time.
    let entry = None;
    let entry_points: Vec<String> = module.entry_points.iter().map(|e| e.name.clone()).collect();

    let words = spv::write_vec(&module, &info, &spv::Options::default(), None)
        .map_err(|e| format!("SPIR-V: {e}"))?;
    assert!(words.len() > 5, "{}: empty SPIR-V", source.label);

    let msl_pipeline = msl::PipelineOptions {
        entry_point: entry.clone(),
        ..Default::default()
    };
    let (metal, _) = msl::write_string(&module, &info, &msl::Options::default(), &msl_pipeline)
        .map_err(|e| format!("MSL: {e}"))?;
    assert!(
        metal.contains("kernel"),
        "{}: MSL has no kernel",
        source.label
    );

    let hlsl_options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_2, // f16 needs 6.2; DX12 on wgpu targets >= 6.0
        ..Default::default()
    };
    let hlsl_pipeline = hlsl::PipelineOptions { entry_point: entry };
    let mut direct = String::new();
    hlsl::Writer::new(&mut direct, &hlsl_options, &hlsl_pipeline)
        .write(&module, &info, None)
        .map_err(|e| format!("HLSL: {e}"))?;
    assert!(
        direct.contains("numthreads"),
        "{}: HLSL has no kernel",
        source.label
    );

    // wgpu's GL backend never offers SHADER_F16, so only f32 variants must reach GLSL.
    if precision == Precision::F32 {
        let glsl_options = glsl::Options {
            version: glsl::Version::new_gles(310),
            ..Default::default()
        };
        for entry_point in &entry_points {
            let glsl_pipeline = glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: entry_point.clone(),
                multiview: None,
            };
            let mut gl = String::new();
            glsl::Writer::new(
                &mut gl,
                &module,
                &info,
                &glsl_options,
                &glsl_pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut writer| writer.write())
            .map_err(|e| format!("GLSL {entry_point}: {e}"))?;
            assert!(
                gl.contains("void main"),
                "{}: GLSL has no main",
                source.label
            );
        }
    }
    Ok(())
}

#[test]
fn every_kernel_variant_validates_and_translates_to_every_backend() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for precision in [Precision::F32, Precision::F16, Precision::F16Acc] {
        for source in KernelSources::for_precision(precision).all() {
            checked += 1;
            if let Err(error) = translate_everywhere(source, precision) {
                failures.push(format!("{} ({:?}): {error}", source.label, precision));
            }
        }
    }
    assert_eq!(checked, 27);
    // The matrix product module carries both variants.
    let matmul = &KernelSources::for_precision(Precision::F32).keys;
    let module = naga::front::wgsl::parse_str(&matmul.code).unwrap();
    let names: Vec<&str> = module
        .entry_points
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    for variant in Kernel::ALL {
        assert!(names.contains(&variant.entry_point()), "{names:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn f16_variants_enable_f16_and_f32_variants_do_not() {
    for precision in [Precision::F16, Precision::F16Acc] {
        for source in KernelSources::for_precision(precision).all() {
            let uses_f16 = source.label.contains("f16");
            assert_eq!(
                source.code.starts_with("enable f16;"),
                uses_f16,
                "{}",
                source.label
            );
        }
    }
    // f16-acc sums the reduction in f16, nothing else.
    let sources = KernelSources::for_precision(Precision::F16Acc);
    for (source, f16_sums) in [
        (&sources.queries, false),
        (&sources.keys, false),
        (&sources.scores, false),
        (&sources.reduction, true),
    ] {
        assert_eq!(
            source.code.contains("alias acc = f16;"),
            f16_sums,
            "{}",
            source.label
        );
    }
    for source in KernelSources::for_precision(Precision::F32).all() {
        assert!(!source.code.contains("enable f16"), "{}", source.label);
    }
}

#[test]
fn a_broken_shader_is_caught() {
    // The check above must be able to fail: a type error is refused.
    let broken = ShaderSource {
        label: "broken".into(),
        code: "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }".into(),
    };
    assert!(translate_everywhere(&broken, Precision::F32).is_err());
}
