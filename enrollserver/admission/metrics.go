package admission

import "github.com/prometheus/client_golang/prometheus"

// metrics are a Controller's collectors.
type metrics struct {
	shed      *prometheus.CounterVec
	abandoned *prometheus.CounterVec
	wait      *prometheus.HistogramVec
	queued    prometheus.GaugeFunc
	inFlight  prometheus.GaugeFunc
}

func newMetrics(c *Controller, labels prometheus.Labels) *metrics {
	return &metrics{
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "edgeenroll_admission_shed_total",
			Help:        "Enrollment requests refused busy (with a Retry-After), by reason (rate_limited, queue_full, displaced, queue_timeout) and class (enroll, renew, renew_urgent).",
			ConstLabels: labels,
		}, []string{"reason", "class"}),
		abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "edgeenroll_admission_abandoned_total",
			Help:        "Queued enrollment requests whose client went away before a slot was free, by class.",
			ConstLabels: labels,
		}, []string{"class"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "edgeenroll_admission_queue_wait_seconds",
			Help:        "Time admitted enrollment requests waited for a slot (0 when one was free), by class.",
			Buckets:     prometheus.ExponentialBuckets(0.001, 2, 14),
			ConstLabels: labels,
		}, []string{"class"}),
		queued: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "edgeenroll_admission_queue_length",
			Help:        "Enrollment requests waiting for a slot.",
			ConstLabels: labels,
		}, func() float64 { return float64(c.Stats().Queued) }),
		inFlight: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "edgeenroll_admission_in_flight",
			Help:        "Enrollment requests being worked on.",
			ConstLabels: labels,
		}, func() float64 { return float64(c.Stats().InFlight) }),
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, col := range []prometheus.Collector{m.shed, m.abandoned, m.wait, m.queued, m.inFlight} {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}
