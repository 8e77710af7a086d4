//! Pictures: PNG scatter plots, 2-D histograms and line charts.
