package enrollserver

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// metrics are the server's Prometheus collectors, registered on the
// registry the caller passes (never the global default).
type metrics struct {
	enrollments         *prometheus.CounterVec
	attestationFailures *prometheus.CounterVec
	issuance            prometheus.Histogram
	timeToFinish        prometheus.Histogram
	begins              *prometheus.CounterVec
	renewals            *prometheus.CounterVec
	admin               *prometheus.CounterVec
	auditSuppressed     prometheus.Counter
	crlEntries          prometheus.Gauge
	measuredBoot        *prometheus.CounterVec
	replays             *prometheus.CounterVec
	verdicts            *prometheus.CounterVec
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
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_renewals_total",
			Help: "Begins by devices that held an unexpired certificate, by outcome (success, refused, error).",
		}, []string{"outcome"}),
		admin: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_admin_calls_total",
			Help: "Admin API calls by action and outcome (success, refused, error).",
		}, []string{"action", "outcome"}),
		auditSuppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgeenroll_audit_suppressed_total",
			Help: "Refused calls not written to the audit log because refusals exceeded their rate limit.",
		}),
		crlEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgeenroll_crl_entries",
			Help: "Entries of the current certificate revocation list.",
		}),
		measuredBoot: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_measured_boot_total",
			Help: "Measured boots judged at finish, by verdict (approved, refused, not_enforced) and code (what enforcement answers; empty when the boot passes).",
		}, []string{"verdict", "code"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_event_log_replays_total",
			Help: "Event logs replayed against quoted PCRs, by replay cache result (hit: the same log and PCR values were verified before; miss: replayed).",
		}, []string{"cache"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_verdict_memo_lookups_total",
			Help: "EK certificate and AK creation checks at begin, by step (ek_certificate, ak_creation) and result (hit: the same evidence verified before, within its validity; miss: verified now).",
		}, []string{"step", "result"}),
	}
	for _, c := range []prometheus.Collector{m.enrollments, m.begins, m.attestationFailures, m.issuance, m.timeToFinish,
		m.renewals, m.admin, m.auditSuppressed, m.crlEntries, m.measuredBoot, m.replays, m.verdicts} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// registerStoreGauges exports record counts, read from the store at each
// scrape.
func (m *metrics) registerStoreGauges(reg prometheus.Registerer, st store.Store) error {
	return reg.Register(&storeCollector{st: st, desc: prometheus.NewDesc("edgeenroll_devices",
		"Device records by status.", []string{"status"}, nil)})
}

type storeCollector struct {
	st   store.Store
	desc *prometheus.Desc
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.st.Stats(context.Background())
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, status := range store.Statuses() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(stats.Devices[status]), string(status))
	}
}
