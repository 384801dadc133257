//! The actor runtime: generator, teacher-client, perception and reasoning experts, reward,
//! learner, and the coordinator that drives a stage (ractor on tokio; libtorch work on
//! dedicated OS threads owned by the compute actors).
