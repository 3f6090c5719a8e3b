//! Skiff's benchmarks and load generators live here (criterion benches under
//! `benches/`, load generators under `src/bin/`).
