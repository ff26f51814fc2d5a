package llamacpp

// TestCrash exposes testCrash to the external tests.
var TestCrash = testCrash
