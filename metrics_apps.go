package tptoken

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Metrics of apps' own tokens: the series of the components' metrics, with
// the app's appid as component_appid and the kind as token (lookups,
// rejections, replays) or op (platform calls), so that a dashboard's
// sum by (component_appid) or by (token) takes them in without a new name.
// Apps are configured, so the labels stay bounded.

// appMetrics is the tokensource.Observer of one app token.
type appMetrics struct {
	set      *metricSet
	appID    string
	kind     string
	lookup   [3]prometheus.Counter // hit, obtained, error
	duration prometheus.Observer
}

// metricsForApp returns the observer of an app token (one per process; a
// source kept across reloads keeps its own).
func metricsForApp(appid, kind string) *appMetrics { return defaultMetrics().app(appid, kind) }

func (s *metricSet) app(appid, kind string) *appMetrics {
	key := appid + "/" + kind
	if v, ok := s.apps.Load(key); ok {
		return v.(*appMetrics)
	}
	m := &appMetrics{set: s, appID: appid, kind: kind, duration: s.callDuration.WithLabelValues(appid, kind)}
	for i, res := range []string{lookupHit, lookupObtained, lookupError} {
		m.lookup[i] = s.lookups.WithLabelValues(appid, kind, res)
	}
	for _, res := range []string{replayReplayed, replayNoFreshToken} {
		s.replays.WithLabelValues(appid, kind, res) // exported from 0
	}
	v, _ := s.apps.LoadOrStore(key, m)
	return v.(*appMetrics)
}

// Lookup implements tokensource.Observer. It is on the request path.
func (m *appMetrics) Lookup(_, result string) {
	switch result {
	case lookupHit:
		m.lookup[0].Inc()
	case lookupObtained:
		m.lookup[1].Inc()
	default:
		m.lookup[2].Inc()
	}
}

// PlatformCall implements tokensource.Observer.
func (m *appMetrics) PlatformCall(op, _, cause, result string, took time.Duration) {
	m.set.calls.WithLabelValues(m.appID, op, cause, result).Inc()
	m.duration.Observe(took.Seconds())
}

// Recovery implements tokensource.Observer: app tokens have no recovery.
func (m *appMetrics) Recovery(string, string, bool) {}

// GoneReport, RebuildResult and RebuildDone implement tokensource.Observer:
// an app token has no authorization to lose, nothing to rebuild.
func (m *appMetrics) GoneReport(string, string)    {}
func (m *appMetrics) RebuildResult(string, string) {}
func (m *appMetrics) RebuildDone(string, string)   {}

// Rejection implements tokensource.Observer.
func (m *appMetrics) Rejection(_, result string) {
	m.set.rejections.WithLabelValues(m.appID, m.kind, result).Inc()
}

var descAppExpiry = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "app_token_expiry_seconds"),
	"Seconds until an app's own token (client_token, app_access_token) expires (negative once passed); absent before its first fetch.",
	[]string{"appid", "token"}, nil)

// collectApps reports the app tokens' expiries (stateCollector).
func collectApps(ctx context.Context, ch chan<- prometheus.Metric, apps []tokensource.AppSource, now time.Time) {
	for _, src := range apps {
		info := src.Info(ctx)
		if !info.Expiry.IsZero() {
			ch <- prometheus.MustNewConstMetric(descAppExpiry, prometheus.GaugeValue, info.Expiry.Sub(now).Seconds(), info.AppID, info.Kind)
		}
	}
}

// Interface guards
var _ tokensource.Observer = (*appMetrics)(nil)
