//! Guest images. (Being written: see ARCHITECTURE.md.)
