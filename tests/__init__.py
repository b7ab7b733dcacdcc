"""kltutor's tests: a package, so that they import their shared helpers (:mod:`tests.helpers`) by a full name."""
