//! Tests of the container runtime that need no scheduler.
