//! Per-step timings of one forward pass, as `Options::profile` asks for them.

/// What one recorded pass computes, for profiles: its name and the work its shapes imply.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// What the pass computes, e.g. `keys`.
    pub name: &'static str,
    /// Floating-point operations.
    pub flops: f64,
    /// The fewest bytes it must read and write.
    pub bytes: f64,
}

/// Where the times of a profile come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// GPU timestamps written at the start and end of each kernel's pass.
    GpuTimestamps,
    /// The host clock around each kernel's pass, submitted alone and waited for (on devices
    /// without timestamp queries): includes submission and wake-up overhead.
    HostPerPass,
    /// The host clock around the whole forward pass of the CPU path, as one step.
    HostPerCall,
}

impl Clock {
    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Clock::GpuTimestamps => "gpu-timestamps",
            Clock::HostPerPass => "host-clock-per-pass",
            Clock::HostPerCall => "host-clock-per-call",
        }
    }
}

/// The time one step took, with the work its shapes imply.
#[derive(Clone, Debug)]
pub struct StepTime {
    /// What the step computes, e.g. `keys`.
    pub name: &'static str,
    /// Floating-point operations.
    pub flops: f64,
    /// The fewest bytes it must read and write.
    pub bytes: f64,
    /// Seconds it took.
    pub seconds: f64,
}

impl StepTime {
    /// `step` timed at `seconds`.
    pub fn of(step: &Step, seconds: f64) -> Self {
        StepTime {
            name: step.name,
            flops: step.flops,
            bytes: step.bytes,
            seconds,
        }
    }
}

/// The timings of one call.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Where the times come from.
    pub clock: Clock,
    /// One entry per step, in the order they ran.
    pub steps: Vec<StepTime>,
    /// Host seconds for the whole call: upload, every step, read-back.
    pub call_seconds: f64,
}

impl Profile {
    /// The same timings with the steps of every chunk and group added up by name, in the
    /// order each name first ran (a call cut into chunks runs each step once per chunk).
    pub fn merged(mut self) -> Profile {
        let mut steps: Vec<StepTime> = Vec::new();
        for step in self.steps {
            match steps.iter_mut().find(|s| s.name == step.name) {
                Some(sum) => {
                    sum.flops += step.flops;
                    sum.bytes += step.bytes;
                    sum.seconds += step.seconds;
                }
                None => steps.push(step),
            }
        }
        self.steps = steps;
        self
    }
}
