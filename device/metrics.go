package device

import "github.com/prometheus/client_golang/prometheus"

// metrics are the agent's Prometheus collectors.
type metrics struct {
	timeToReady prometheus.Gauge
	ready       prometheus.Gauge
	retries     prometheus.Counter
	errors      *prometheus.CounterVec
	renewals    *prometheus.CounterVec
	certExpiry  prometheus.Gauge
	bundle      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		timeToReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgeenroll_agent_time_to_ready_seconds",
			Help: "Seconds from agent start to ready in this boot.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgeenroll_agent_ready",
			Help: "1 when the device holds a valid certificate and verified bundle.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgeenroll_agent_retries_total",
			Help: "Enrollment attempts retried after a transient failure, this boot.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_agent_errors_total",
			Help: "Failed enrollment attempts by protocol error code (network, local for non-protocol failures).",
		}, []string{"code"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeenroll_agent_renewals_total",
			Help: "Certificate renewals by outcome.",
		}, []string{"outcome"}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgeenroll_agent_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the device certificate expires.",
		}),
		bundle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgeenroll_agent_bundle_version",
			Help: "Version of the config bundle in use.",
		}),
	}
	for _, c := range []prometheus.Collector{m.timeToReady, m.ready, m.retries, m.errors, m.renewals, m.certExpiry, m.bundle} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
