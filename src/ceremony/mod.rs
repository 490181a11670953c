//! Key ceremony: transcript and plans (issue 3).
