//! `diffflow`: train, sample and evaluate Diffusion Normalizing Flow models.

mod plot;

fn main() {}
