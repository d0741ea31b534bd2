package api

// Version is the protocol version carried in every path.
const Version = "v1"

// HTTPS paths.
const (
	PathBegin   = "/v1/enroll/begin"
	PathFinish  = "/v1/enroll/finish"
	PathWhoami  = "/v1/whoami"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathMetrics = "/metrics"
)

// HeaderCorrelationID carries the correlation ID of one enrollment in both
// directions. The device sets it on begin; the server echoes it or assigns
// one if missing or malformed.
const HeaderCorrelationID = "X-Correlation-ID"

// ContentTypeJSON is the only accepted request content type.
const ContentTypeJSON = "application/json"
