//! The benchmark's named workloads: real models' layouts (in their own token order) and token
//! widths, and a tiny one for smoke tests.

use crate::error::{Error, Result};
use crate::layout::{Grid, Layout};

/// A named input shape: one image's layout and token width.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// The name on the command line.
    pub name: &'static str,
    /// What it stands for.
    pub about: &'static str,
    /// Grids as `(offset, height, width, stride)`, in the order the model produces its tokens.
    pub grids: &'static [(usize, usize, usize, usize)],
    /// Tokens per image `n` (grids and loose tokens).
    pub tokens: usize,
    /// Token width `d`.
    pub width: usize,
}

/// Qwen2-VL's grids for 16 frames of 1008x1008 video: one 36x36 grid per temporal patch
/// (two frames), one after the other; shorter clips take the first ones.
const VIDEO_GRIDS: [(usize, usize, usize, usize); 8] = [
    (0, 36, 36, 36),
    (1296, 36, 36, 36),
    (2592, 36, 36, 36),
    (3888, 36, 36, 36),
    (5184, 36, 36, 36),
    (6480, 36, 36, 36),
    (7776, 36, 36, 36),
    (9072, 36, 36, 36),
];

/// The workloads of `--workload all`, as the project's benchmarks name them.
pub const WORKLOADS: [Workload; 8] = [
    Workload {
        name: "llava15-7b",
        about: "LLaVA-1.5-7B: one 24x24 grid",
        grids: &[(0, 24, 24, 24)],
        tokens: 576,
        width: 4096,
    },
    Workload {
        name: "llava15-13b",
        about: "LLaVA-1.5-13B: one 24x24 grid",
        grids: &[(0, 24, 24, 24)],
        tokens: 576,
        width: 5120,
    },
    Workload {
        name: "llava-next-7b",
        about: "LLaVA-NeXT-7B anyres, a 672x672 image: 24x24 base + 48x48 crops, a newline \
                token after each crop row (--layout llava-next:672x672)",
        grids: &[(0, 24, 24, 24), (576, 48, 48, 49)],
        tokens: 2928,
        width: 4096,
    },
    Workload {
        name: "llava-next-7b-photo",
        about: "LLaVA-NeXT-7B anyres, a 1000x667 photo: 24x24 base + 32x48 unpadded crops, a \
                newline token after each crop row (--layout llava-next:1000x667)",
        grids: &[(0, 24, 24, 24), (576, 32, 48, 49)],
        tokens: 2144,
        width: 4096,
    },
    Workload {
        name: "qwen2vl-7b",
        about: "Qwen2-VL-7B, 1008x1008 image: one 36x36 grid (--layout qwen2-vl:1x72x72)",
        grids: &[(0, 36, 36, 36)],
        tokens: 1296,
        width: 3584,
    },
    Workload {
        name: "qwen2vl-7b-video",
        about: "Qwen2-VL-7B, 16 frames of 1008x1008 video: one 36x36 grid per temporal patch, \
                8 of them (--layout qwen2-vl:8x72x72)",
        grids: &VIDEO_GRIDS,
        tokens: 10368,
        width: 3584,
    },
    // Two shorter clips, for the CPU path's time against n between the image workloads and
    // the 16-frame one.
    Workload {
        name: "qwen2vl-7b-video-8f",
        about: "Qwen2-VL-7B, 8 frames of 1008x1008 video: 4 grids of 36x36 \
                (--layout qwen2-vl:4x72x72)",
        grids: VIDEO_GRIDS.split_at(4).0,
        tokens: 5184,
        width: 3584,
    },
    Workload {
        name: "qwen2vl-7b-video-12f",
        about: "Qwen2-VL-7B, 12 frames of 1008x1008 video: 6 grids of 36x36 \
                (--layout qwen2-vl:6x72x72)",
        grids: VIDEO_GRIDS.split_at(6).0,
        tokens: 7776,
        width: 3584,
    },
];

/// A small shape for smoke tests of the harness (not part of `all`).
pub const TINY: Workload = Workload {
    name: "tiny",
    about: "smoke test: a 7x9 grid with a loose token after each row and 5x5 grid, 9 loose \
            tokens",
    grids: &[(1, 7, 9, 10), (71, 5, 5, 5)],
    tokens: 97,
    width: 75,
};

/// The workloads a `--workload` value names: one by name, or `all`.
pub fn workloads(name: &str) -> Result<Vec<Workload>> {
    if name == "all" {
        return Ok(WORKLOADS.to_vec());
    }
    WORKLOADS
        .iter()
        .chain([&TINY])
        .find(|w| w.name == name)
        .map(|w| vec![*w])
        .ok_or_else(|| {
            let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
            Error::InvalidArgument(format!(
                "--workload {name:?} is not a workload; expected all, tiny or one of {}",
                names.join(", ")
            ))
        })
}

impl Workload {
    /// The layout of one image.
    pub fn layout(&self) -> Result<Layout> {
        let grids = self
            .grids
            .iter()
            .map(|&(offset, height, width, stride)| Grid::strided(offset, height, width, stride))
            .collect();
        Layout::new(self.tokens, grids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::LLAVA_NEXT_PINPOINTS;

    #[test]
    fn the_workloads_are_the_models_own_layouts() {
        let layout = |name: &str| workloads(name).unwrap()[0].layout().unwrap();
        let next = |w, h| Layout::llava_next(w, h, &LLAVA_NEXT_PINPOINTS).unwrap();
        assert_eq!(layout("llava15-7b"), Layout::llava15());
        assert_eq!(layout("llava-next-7b"), next(672, 672));
        assert_eq!(layout("llava-next-7b-photo"), next(1000, 667));
        assert_eq!(layout("qwen2vl-7b"), Layout::qwen2_vl(1, 72, 72).unwrap());
        assert_eq!(
            layout("qwen2vl-7b-video"),
            Layout::qwen2_vl(8, 72, 72).unwrap()
        );
        assert_eq!(
            layout("qwen2vl-7b-video-8f"),
            Layout::qwen2_vl(4, 72, 72).unwrap()
        );
        assert_eq!(
            layout("qwen2vl-7b-video-12f"),
            Layout::qwen2_vl(6, 72, 72).unwrap()
        );
    }
}
