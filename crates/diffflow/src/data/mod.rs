//! Data: built-in 2-D sets, image densities, standardisation.
