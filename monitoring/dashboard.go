package monitoring

import _ "embed"

// Dashboard is dashboard.json: the Grafana dashboard of kez-chat
// instances, which the chart ships as a ConfigMap for Grafana's dashboard
// sidecar (grafanaDashboard.enabled).
//
//go:embed dashboard.json
var Dashboard []byte
