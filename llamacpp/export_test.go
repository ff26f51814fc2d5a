package llamacpp

// TestCrash exposes testCrash to the external tests.
var TestCrash = testCrash

// Test-only views of ggml: its type table and its own GGUF reader.
var (
	TypeInfo = typeInfo
	ReadGGUF = readGGUF
)
