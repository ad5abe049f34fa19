//! GitHub simulator.
