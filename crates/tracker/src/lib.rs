//! Tracker (in progress).
