//! Time discretisation (paper section 3.3), diffusion schedules `g(t)` and the progressive-N
//! schedule.

mod grid;
mod schedule;

pub use grid::{fixed_grid, flexible_grid, GridKind, GridSpec};
pub use schedule::{Diffusion, StepsSchedule};
