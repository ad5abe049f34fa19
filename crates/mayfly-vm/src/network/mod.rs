//! Per-VM network isolation. (Being written: see ARCHITECTURE.md.)
