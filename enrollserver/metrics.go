package enrollserver

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus collectors, registered on the
// registry the caller passes (never the global default).
type metrics struct {
	enrollments         *prometheus.CounterVec
	attestationFailures *prometheus.CounterVec
	issuance            prometheus.Histogram
	timeToFinish        prometheus.Histogram
	begins              *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_enrollments_total",
			Help: "Finished enrollments by outcome (success, refused, error) and error code.",
		}, []string{"outcome", "code"}),
		begins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_enrollment_begins_total",
			Help: "Begun enrollments by outcome and error code.",
		}, []string{"outcome", "code"}),
		attestationFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_attestation_failures_total",
			Help: "TPM evidence refused, by verification reason.",
		}, []string{"reason"}),
		issuance: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgeenroll_issuance_duration_seconds",
			Help:    "Time to issue a device certificate and sign its bundle.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}),
		timeToFinish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgeenroll_enrollment_duration_seconds",
			Help:    "Time from begin to a successful finish of one session.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	for _, c := range []prometheus.Collector{m.enrollments, m.begins, m.attestationFailures, m.issuance, m.timeToFinish} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
