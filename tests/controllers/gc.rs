//! The garbage collector: background, foreground and orphan propagation.
