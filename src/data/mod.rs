//! Dataset formats and the procedural visual-reasoning task.
