package api

// MaxJSONDepth exposes maxJSONDepth to the api_test package.
const MaxJSONDepth = maxJSONDepth
