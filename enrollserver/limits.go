package enrollserver

import "time"

// Server-side caps and defaults. The admin API's wire caps (request sizes,
// page sizes, import chunking, pending defaults) are in api/admin_limits.go.
const (
	// DefaultGroupName is the group of devices not pre-registered into one.
	DefaultGroupName = "default"
	// MaxPendingCap bounds the configurable pending cap.
	MaxPendingCap = 1_000_000
	// MaxPendingTTL bounds how long a pending record may wait.
	MaxPendingTTL = 30 * 24 * time.Hour

	// DefaultCRLLifetime is the CRL's nextUpdate - thisUpdate: short, so
	// relying parties that cache until nextUpdate learn of a revocation
	// within the hour. The CRL is re-signed at every revocation and every
	// quarter of its lifetime.
	DefaultCRLLifetime = time.Hour
	MinCRLLifetime     = time.Minute
	MaxCRLLifetime     = 7 * 24 * time.Hour

	// sessionsFullRetryAfter is the Retry-After, in seconds, of a begin
	// refused because the store holds as many live sessions as it may: a
	// session lives two minutes, so a few seconds free some.
	sessionsFullRetryAfter = 5

	// DefaultAuditRefusalsPerSecond bounds the audit records refused calls
	// can create: unauthenticated clients must not be able to fill the
	// disk through the audit log.
	DefaultAuditRefusalsPerSecond = 50

	// MaxAuditScan bounds the records one audit query reads while
	// filtering, so a filter matching nothing still answers quickly; the
	// answer's page token resumes the scan.
	MaxAuditScan = 100_000
	// MaxDeviceScan bounds the devices one filtered listing reads.
	MaxDeviceScan = 200_000

	// DefaultReplayCacheSize is how many verified event-log replays a
	// server remembers (see replayCache; about 2 KiB each, so 8 MiB).
	DefaultReplayCacheSize = 4096
	// DefaultVerdictMemoSize is how many EK certificate verdicts, and as
	// many AK creation verdicts, a server remembers (see
	// verifications.go; about 0.3 and 0.6 KiB each, so 18 MiB).
	DefaultVerdictMemoSize = 20000
)
