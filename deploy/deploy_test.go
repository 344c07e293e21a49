package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v4"

	"github.com/sendq/sendq/internal/config"
	"github.com/sendq/sendq/internal/promtool"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
)

// deployFiles returns the files under the deploy directory (the test's
// working directory) whose names end in one of exts; every file if none.
func deployFiles(t *testing.T, exts ...string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if len(exts) == 0 || slices.Contains(exts, filepath.Ext(path)) {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk deploy: %v", err)
	}
	return out
}

// decodeYAML returns every non-empty document of a YAML file.
func decodeYAML(path string) ([]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []any
	for i := 0; ; i++ {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

func mustYAML(t *testing.T, path string) []any {
	t.Helper()
	docs, err := decodeYAML(path)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return docs
}

func mustJSON(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return v
}

// get walks v along keys (map keys, or decimal slice indexes) and returns
// what it finds, or nil.
func get(v any, keys ...string) any {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			var i int
			if _, err := fmt.Sscan(k, &i); err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// TestFilesParse checks that every YAML file under deploy/ parses, every
// document of it, and that every JSON file parses.
func TestFilesParse(t *testing.T) {
	t.Parallel()
	files := deployFiles(t, ".yml", ".yaml", ".json")
	if len(files) == 0 {
		t.Fatal("no YAML or JSON file under deploy/")
	}
	for _, path := range files {
		t.Run(path, func(t *testing.T) {
			if filepath.Ext(path) == ".json" {
				mustJSON(t, path)
				return
			}
			docs, err := decodeYAML(path)
			if err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			if len(docs) == 0 {
				t.Errorf("%s has no YAML document", path)
			}
		})
	}
}

// family is one exported metric family: its type and the label values
// seen for each label name.
type family struct {
	typ    dto.MetricType
	labels map[string]map[string]bool
}

// exported gathers the metrics a sendq process exports, built as
// cmd/sendq/main.go builds them, on a private Redis.
func exported(t *testing.T) map[string]family {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	// Put one task in the queue first: on a Redis where the queue was never
	// created, the queue collector exports sendq_redis_up 0 and no queue
	// series (asynq's not-found error is not asynq.ErrQueueNotFound).
	client := asynq.NewClientFromRedisClient(rdb)
	if _, err := client.Enqueue(asynq.NewTask("deploy_test:probe", nil), asynq.Queue(queue.Name)); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	reg := prometheus.NewRegistry()
	// A worker initialises the series of its relays (SENDQ_SMTP_URL's
	// names); two relays without name= are primary and secondary.
	metrics.New(reg, reg).InitRelays("primary", "secondary")
	insp := asynq.NewInspectorFromRedisClient(rdb)
	// The queues of every priority, as sendq serve groups them, with the
	// emails their chunks hold.
	var groups []metrics.QueueGroup
	for _, p := range queue.Priorities {
		groups = append(groups, metrics.QueueGroup{Label: queue.BaseName(p), Queues: queue.DefaultTopology.Queues(p)})
	}
	reg.MustRegister(metrics.NewShardedQueueCollector(insp, groups).WithHeld(queue.NewStore(rdb, 0).HeldEmails))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	fams := make(map[string]family)
	for _, mf := range mfs {
		f := family{typ: mf.GetType(), labels: make(map[string]map[string]bool)}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if f.labels[lp.GetName()] == nil {
					f.labels[lp.GetName()] = make(map[string]bool)
				}
				f.labels[lp.GetName()][lp.GetValue()] = true
			}
		}
		fams[mf.GetName()] = f
	}
	if len(fams["sendq_queue_tasks"].labels) == 0 {
		t.Fatal("the queue collector exported no sendq_queue_tasks series: is the test Redis reachable?")
	}
	return fams
}

// targetLabels are added by Prometheus (or our relabelling) at scrape
// time, so they are not on the exported metrics.
var targetLabels = map[string]bool{"job": true, "instance": true, "service": true, "namespace": true, "pod": true}

var (
	metricRef = regexp.MustCompile(`\bsendq_[a-z0-9_]+`)
	// A metric name with its selector, such as sendq_queue_tasks{state="pending"}.
	selectorRef = regexp.MustCompile(`\b(sendq_[a-z0-9_]+)\s*\{([^}]*)\}`)
	matcher     = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
)

// seriesFamily maps a series name as PromQL sees it to its family:
// histogram series carry _bucket, _sum and _count suffixes. bare is true
// when name is a histogram's or summary's family name itself, which is no
// series in PromQL.
func seriesFamily(fams map[string]family, name string) (fam string, bare, ok bool) {
	if f, found := fams[name]; found {
		bare = f.typ == dto.MetricType_HISTOGRAM || f.typ == dto.MetricType_SUMMARY
		return name, bare, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, cut := strings.CutSuffix(name, suffix)
		if !cut {
			continue
		}
		f, found := fams[base]
		switch {
		case !found:
		case f.typ == dto.MetricType_HISTOGRAM, f.typ == dto.MetricType_SUMMARY && suffix != "_bucket":
			return base, false, true
		}
	}
	return "", false, false
}

// checkRefs returns a sentence for each sendq metric that text refers to
// and sendq does not export. In a PromQL expression (promql true) it also
// rejects a histogram's bare name and label matchers on labels or
// (for = and !=) values the metric never has.
func checkRefs(fams map[string]family, text string, promql bool) []string {
	var problems []string
	for _, name := range metricRef.FindAllString(text, -1) {
		_, bare, ok := seriesFamily(fams, name)
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("metric %s is not exported by sendq", name))
		case promql && bare:
			problems = append(problems, fmt.Sprintf("%s is a histogram: PromQL needs %s_bucket, _sum or _count", name, name))
		}
	}
	if !promql {
		return problems
	}
	for _, sel := range selectorRef.FindAllStringSubmatch(text, -1) {
		name := sel[1]
		fam, _, ok := seriesFamily(fams, name)
		if !ok {
			continue // reported above
		}
		labels := fams[fam].labels
		for _, m := range matcher.FindAllStringSubmatch(sel[2], -1) {
			label, op, value := m[1], m[2], m[3]
			switch {
			case targetLabels[label]:
			case label == "le" && strings.HasSuffix(name, "_bucket"):
			case labels[label] == nil:
				problems = append(problems, fmt.Sprintf("%s has no label %q", name, label))
			case (op == "=" || op == "!=") && !labels[label][value]:
				problems = append(problems, fmt.Sprintf("%s{%s%s%q}: sendq never exports %s=%q", name, label, op, value, label, value))
			}
		}
	}
	return problems
}

// promqlKeys are the keys whose string values are PromQL: Grafana targets
// and variables, Prometheus rules and rule tests, KEDA triggers.
var promqlKeys = map[string]bool{"expr": true, "query": true, "definition": true, "series": true}

// promqlStrings returns every string under a key in promqlKeys.
func promqlStrings(v any) []string {
	var out []string
	var walk func(key string, v any)
	walk = func(key string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(k, e)
			}
		case []any:
			for _, e := range x {
				walk(key, e)
			}
		case string:
			if promqlKeys[key] {
				out = append(out, x)
			}
		}
	}
	walk("", v)
	return out
}

// hpaSelectors turns an HPA's External and Pods metrics into PromQL-like
// selectors, name{label="value"}, for checkRefs.
func hpaSelectors(doc any) []string {
	if str(get(doc, "kind")) != "HorizontalPodAutoscaler" {
		return nil
	}
	var out []string
	for _, m := range list(get(doc, "spec", "metrics")) {
		for _, kind := range []string{"external", "pods"} {
			metric := get(m, kind, "metric")
			name := str(get(metric, "name"))
			if name == "" {
				continue
			}
			var matchers []string
			if ml, ok := get(metric, "selector", "matchLabels").(map[string]any); ok {
				for k, v := range ml {
					matchers = append(matchers, fmt.Sprintf("%s=%q", k, fmt.Sprint(v)))
				}
			}
			sort.Strings(matchers)
			out = append(out, name+"{"+strings.Join(matchers, ",")+"}")
		}
	}
	return out
}

// TestMetricNamesExist checks that every sendq metric the deploy files
// name (dashboard, alerts, Prometheus config, KEDA and HPA, README) is one
// sendq exports, and that their PromQL selects labels and values that exist.
func TestMetricNamesExist(t *testing.T) {
	t.Parallel()
	fams := exported(t)

	// The checker itself: each of these mistakes must be caught.
	for _, tc := range []struct {
		text   string
		promql bool
		want   bool // a problem is reported
	}{
		{`rate(sendq_emails_sent_total[5m])`, true, false},
		{`rate(sendq_emails_sentt_total[5m])`, true, true},
		{`sendq_emails_sent`, false, true},
		{`histogram_quantile(0.99, sum by (le) (rate(sendq_smtp_send_duration_seconds_bucket[5m])))`, true, false},
		{`rate(sendq_smtp_send_duration_seconds[5m])`, true, true},
		{`see sendq_smtp_send_duration_seconds`, false, false},
		{`sendq_emails_sent_total_count`, false, true},
		{`max(sendq_queue_tasks{queue="emails", state="pending"})`, true, false},
		{`max(sendq_queue_tasks{queue="emails", state="pendng"})`, true, true},
		{`max(sendq_queue_tasks{queue="email"})`, true, true},
		{`sum(rate(sendq_emails_failed_total{reason!="cancelled"}[5m]))`, true, true},
		{`sum(rate(sendq_emails_failed_total{reasons=~".+"}[5m]))`, true, true},
		{`sendq_build_info{instance=~"$instance"}`, true, false},
	} {
		got := len(checkRefs(fams, tc.text, tc.promql)) > 0
		if got != tc.want {
			t.Errorf("checkRefs(%q, promql=%v) reports a problem = %v; want %v", tc.text, tc.promql, got, tc.want)
		}
	}

	var files []string
	for _, path := range deployFiles(t) {
		if filepath.Ext(path) != ".go" {
			files = append(files, path)
		}
	}
	var refs int
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		refs += len(metricRef.FindAll(b, -1))
		for _, p := range checkRefs(fams, string(b), false) {
			t.Errorf("%s: %s", path, p)
		}
		var docs []any
		switch filepath.Ext(path) {
		case ".json":
			docs = []any{mustJSON(t, path)}
		case ".yml", ".yaml":
			docs = mustYAML(t, path)
		}
		for _, doc := range docs {
			exprs := append(promqlStrings(doc), hpaSelectors(doc)...)
			for _, expr := range exprs {
				for _, p := range checkRefs(fams, expr, true) {
					t.Errorf("%s: %s\n\tin %s", path, p, expr)
				}
			}
		}
	}
	// Guard the guard: the dashboard alone names dozens.
	if refs < 20 {
		t.Errorf("found %d sendq metric references under deploy/; want at least 20 (is the test reading the right files?)", refs)
	}
}

// settingsByEnv returns config.Settings() keyed by variable name.
func settingsByEnv() map[string]config.Setting {
	m := make(map[string]config.Setting)
	for _, s := range config.Settings() {
		m[s.Env] = s
	}
	return m
}

// envVar is one environment variable a deploy file sets.
type envVar struct {
	where, name, value string
	// sendq is true when sendq reads it (a sendq container, the sendq
	// ConfigMap or Secret): then every name must be a setting, not only
	// the SENDQ_ ones.
	sendq bool
}

// composeEnv returns the environment of every compose service.
func composeEnv(t *testing.T) []envVar {
	t.Helper()
	docs := mustYAML(t, "docker-compose.yml")
	services, ok := get(docs[0], "services").(map[string]any)
	if !ok || len(services) == 0 {
		t.Fatal("docker-compose.yml: no services")
	}
	var out []envVar
	for name, svc := range services {
		isSendq := get(svc, "build") != nil || strings.HasPrefix(str(get(svc, "image")), "sendq")
		where := "docker-compose.yml services." + name
		switch env := get(svc, "environment").(type) {
		case map[string]any:
			for k, v := range env {
				out = append(out, envVar{where, k, fmt.Sprint(v), isSendq})
			}
		case []any:
			for _, kv := range env {
				k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
				out = append(out, envVar{where, k, v, isSendq})
			}
		}
	}
	return out
}

// k8sDocs returns every document of every manifest under k8s/.
func k8sDocs(t *testing.T) map[string][]any {
	t.Helper()
	out := make(map[string][]any)
	for _, path := range deployFiles(t, ".yaml", ".yml") {
		if strings.HasPrefix(path, "k8s"+string(filepath.Separator)) {
			out[path] = mustYAML(t, path)
		}
	}
	if len(out) == 0 {
		t.Fatal("no manifest under k8s/")
	}
	return out
}

// k8sEnv returns the keys of ConfigMaps and Secrets and the env of every
// Deployment container.
func k8sEnv(t *testing.T) []envVar {
	t.Helper()
	var out []envVar
	for path, docs := range k8sDocs(t) {
		for _, doc := range docs {
			kind, name := str(get(doc, "kind")), str(get(doc, "metadata", "name"))
			where := fmt.Sprintf("%s %s/%s", path, kind, name)
			switch kind {
			case "ConfigMap", "Secret":
				for _, field := range []string{"data", "stringData"} {
					if m, ok := get(doc, field).(map[string]any); ok {
						for k, v := range m {
							out = append(out, envVar{where, k, fmt.Sprint(v), true})
						}
					}
				}
			case "Deployment", "StatefulSet", "DaemonSet", "Job":
				for _, c := range list(get(doc, "spec", "template", "spec", "containers")) {
					isSendq := strings.HasPrefix(str(get(c, "image")), "sendq")
					for _, e := range list(get(c, "env")) {
						out = append(out, envVar{where + " container " + str(get(c, "name")),
							str(get(e, "name")), str(get(e, "value")), isSendq})
					}
				}
			}
		}
	}
	return out
}

// TestEnvVarsAreSettings checks that every variable the compose file and
// the Kubernetes manifests give sendq is one sendq reads.
func TestEnvVarsAreSettings(t *testing.T) {
	t.Parallel()
	settings := settingsByEnv()
	vars := append(composeEnv(t), k8sEnv(t)...)
	if len(vars) == 0 {
		t.Fatal("found no environment variable in docker-compose.yml or k8s/")
	}
	checked := 0
	for _, v := range vars {
		if !v.sendq && !strings.HasPrefix(v.name, "SENDQ_") && v.name != "REDIS_URL" {
			continue
		}
		checked++
		if _, ok := settings[v.name]; !ok {
			t.Errorf("%s sets %s; want one of config.Settings()[i].Env (sendq reads no such variable)", v.where, v.name)
		}
	}
	if checked == 0 {
		t.Error("checked no sendq variable; want REDIS_URL and SENDQ_* in docker-compose.yml and k8s/")
	}
}

// TestK8sReferences checks that the Deployments' envFrom and secretKeyRef
// name a ConfigMap, Secret and key that the manifests define.
func TestK8sReferences(t *testing.T) {
	t.Parallel()
	keys := make(map[string]map[string]bool) // "ConfigMap/name" -> keys
	all := k8sDocs(t)
	for _, docs := range all {
		for _, doc := range docs {
			kind := str(get(doc, "kind"))
			if kind != "ConfigMap" && kind != "Secret" {
				continue
			}
			id := kind + "/" + str(get(doc, "metadata", "name"))
			keys[id] = make(map[string]bool)
			for _, field := range []string{"data", "stringData"} {
				if m, ok := get(doc, field).(map[string]any); ok {
					for k := range m {
						keys[id][k] = true
					}
				}
			}
		}
	}
	for path, docs := range all {
		for _, doc := range docs {
			for _, c := range list(get(doc, "spec", "template", "spec", "containers")) {
				for _, ef := range list(get(c, "envFrom")) {
					for field, kind := range map[string]string{"configMapRef": "ConfigMap", "secretRef": "Secret"} {
						if name := str(get(ef, field, "name")); name != "" && keys[kind+"/"+name] == nil {
							t.Errorf("%s: envFrom %s %q; want a %s defined under k8s/", path, field, name, kind)
						}
					}
				}
				for _, e := range list(get(c, "env")) {
					for field, kind := range map[string]string{"configMapKeyRef": "ConfigMap", "secretKeyRef": "Secret"} {
						ref := get(e, "valueFrom", field)
						if ref == nil {
							continue
						}
						id, key := kind+"/"+str(get(ref, "name")), str(get(ref, "key"))
						if !keys[id][key] {
							t.Errorf("%s: env %s from %s key %q; want a key of a %s defined under k8s/", path, str(get(e, "name")), id, key, kind)
						}
					}
				}
			}
		}
	}
}

// httpDrain bounds the HTTP server's shutdown, which cmd/sendq/main.go
// runs before the worker's: a stopping worker may take it plus
// SENDQ_SHUTDOWN_TIMEOUT.
const httpDrain = 10 * time.Second

// TestWorkerGracePeriod checks that Kubernetes and Docker wait longer for
// a stopping worker than the worker takes to stop, so that in-flight SMTP
// transactions are not killed.
func TestWorkerGracePeriod(t *testing.T) {
	t.Parallel()
	s, ok := settingsByEnv()["SENDQ_SHUTDOWN_TIMEOUT"]
	if !ok {
		t.Fatal("config.Settings() has no SENDQ_SHUTDOWN_TIMEOUT")
	}
	def, err := time.ParseDuration(s.Def)
	if err != nil {
		t.Fatalf("SENDQ_SHUTDOWN_TIMEOUT default %q: %v", s.Def, err)
	}

	// The shutdown timeout a worker gets: the default unless overridden.
	shutdown := func(vars []envVar, where string) time.Duration {
		d := def
		for _, v := range vars {
			if v.name == "SENDQ_SHUTDOWN_TIMEOUT" && strings.Contains(v.where, where) {
				var err error
				if d, err = time.ParseDuration(v.value); err != nil {
					t.Fatalf("%s: SENDQ_SHUTDOWN_TIMEOUT=%q: %v", v.where, v.value, err)
				}
			}
		}
		return d
	}

	k8s := mustYAML(t, filepath.Join("k8s", "worker-deployment.yaml"))
	grace, ok := get(k8s[0], "spec", "template", "spec", "terminationGracePeriodSeconds").(int)
	if !ok {
		t.Fatal("k8s/worker-deployment.yaml: no spec.template.spec.terminationGracePeriodSeconds; Kubernetes' default 30s is too short")
	}
	compose := mustYAML(t, "docker-compose.yml")
	stop, err := time.ParseDuration(str(get(compose[0], "services", "worker", "stop_grace_period")))
	if err != nil {
		t.Fatalf("docker-compose.yml: services.worker.stop_grace_period: %v; Docker's default 10s is too short", err)
	}
	kenv := k8sEnv(t)
	for _, tc := range []struct {
		where           string
		grace, shutdown time.Duration
	}{
		{"k8s/worker-deployment.yaml terminationGracePeriodSeconds", time.Duration(grace) * time.Second,
			max(shutdown(kenv, "ConfigMap/sendq-config"), shutdown(kenv, "Deployment/sendq-worker"))},
		{"docker-compose.yml services.worker.stop_grace_period", stop, shutdown(composeEnv(t), "services.worker")},
	} {
		if tc.grace <= tc.shutdown+httpDrain {
			t.Errorf("%s = %s; want more than SENDQ_SHUTDOWN_TIMEOUT %s + HTTP drain %s", tc.where, tc.grace, tc.shutdown, httpDrain)
		}
		if tc.shutdown < def {
			t.Logf("%s: SENDQ_SHUTDOWN_TIMEOUT %s is below its default %s", tc.where, tc.shutdown, def)
		}
	}
}

// TestDashboardDatasource checks that the dashboard's panels use the
// datasource Grafana is provisioned with and have unique ids.
func TestDashboardDatasource(t *testing.T) {
	t.Parallel()
	provisioned := map[string]bool{"-- Grafana --": true} // Grafana's built-in annotations
	for _, path := range deployFiles(t, ".yml", ".yaml") {
		if !strings.Contains(path, filepath.Join("provisioning", "datasources")) {
			continue
		}
		for _, doc := range mustYAML(t, path) {
			for _, ds := range list(get(doc, "datasources")) {
				provisioned[str(get(ds, "uid"))] = true
			}
		}
	}
	if !provisioned["prometheus"] {
		t.Errorf("grafana/provisioning/datasources provisions uids %v; want \"prometheus\"", provisioned)
	}
	dash := mustJSON(t, filepath.Join("grafana", "dashboards", "sendq.json"))
	var uids []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ds, ok := x["datasource"].(map[string]any); ok {
				uids = append(uids, str(ds["uid"]))
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(dash)
	if len(uids) == 0 {
		t.Error("the dashboard names no datasource")
	}
	for _, uid := range uids {
		if !provisioned[uid] {
			t.Errorf("dashboard datasource uid %q; want a provisioned one (%v)", uid, provisioned)
		}
	}
	ids := make(map[float64]bool)
	for _, p := range list(get(dash, "panels")) {
		id, _ := get(p, "id").(float64)
		if ids[id] {
			t.Errorf("panel %q has id %v, used before; want unique ids", str(get(p, "title")), id)
		}
		ids[id] = true
	}
}

// TestAlertRules runs the alert rules' unit tests with promtool, when it
// is installed (make test and CI install it and require it).
func TestAlertRules(t *testing.T) {
	t.Parallel()
	bin := promtool.Path(t)
	for _, args := range [][]string{
		{"check", "rules", filepath.Join("prometheus", "alerts.yml")},
		{"test", "rules", filepath.Join("prometheus", "alerts_test.yml")},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
