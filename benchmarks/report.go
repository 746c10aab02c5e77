package benchmarks

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// bootRecord is one node of one measured boot, for the report.
type bootRecord struct {
	Bench   string // "BenchmarkBoot/docker/warm"
	Cluster string
	Node    string
	// The cluster's phases, and the node's own pull time (0 when the node
	// cannot say, as a real Talos cannot).
	ConfigS, CreateS, ReadyS, PullS float64
	UpstreamMB                      float64
}

// boots are the boots of this run, for -pullthrough.report.
var boots bootReport

// bootReport collects boots while BenchmarkBoot runs.
type bootReport struct {
	mu      sync.Mutex
	records []bootRecord
}

func (r *bootReport) add(recs ...bootRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, recs...)
}

// write puts the report in dir: boot.txt, one benchmark line per boot in
// the format benchstat reads, and boot.svg (and boot.png), the phases of every node of
// every boot, cold beside warm.
func (r *bootReport) write(dir string) error {
	r.mu.Lock()
	recs := append([]bootRecord(nil), r.records...)
	r.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("writing the benchmark report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot.txt"), []byte(benchstatLines(recs)), 0o644); err != nil {
		return fmt.Errorf("writing the benchmark report: %w", err)
	}
	for _, name := range []string{"boot.svg", "boot.png"} {
		if err := phasesPicture(recs, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("drawing the benchmark report: %w", err)
		}
	}
	return nil
}

// benchstatLines are one line per boot (its first node carries the
// cluster's phases), as go test -bench prints them.
func benchstatLines(recs []bootRecord) string {
	var b strings.Builder
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[r.Cluster] {
			continue
		}
		seen[r.Cluster] = true
		boot := r.CreateS + r.ReadyS
		fmt.Fprintf(&b, "%s 1 %d ns/op %.4f boot-s/op %.4f config-s/op %.4f create-s/op %.4f ready-s/op %.2f upstream-MB/op\n",
			r.Bench, int64(boot*1e9), boot, r.ConfigS, r.CreateS, r.ReadyS, r.UpstreamMB)
	}
	return b.String()
}

// phasesPicture draws one horizontal bar per node of each boot, stacked:
// generating configs, the provisioner's create, the node's own pulls, and
// the rest of the wait until ready.
func phasesPicture(recs []bootRecord, path string) error {
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Bench < recs[j].Bench })
	p := plot.New()
	p.Title.Text = "Talos stand-in boots: where the seconds go, per node"
	p.X.Label.Text = "seconds"
	labels := make([]string, len(recs))
	config, create, pull, rest := make(plotter.Values, len(recs)), make(plotter.Values, len(recs)), make(plotter.Values, len(recs)), make(plotter.Values, len(recs))
	for i, r := range recs {
		phase := r.Bench[strings.LastIndex(r.Bench, "/")+1:]
		labels[i] = phase + " " + shortNode(r.Node)
		config[i], create[i], pull[i] = r.ConfigS, r.CreateS, r.PullS
		rest[i] = max(0, r.ReadyS-r.PullS)
	}
	w := vg.Points(12)
	var prev *plotter.BarChart
	for _, s := range []struct {
		name string
		v    plotter.Values
		c    color.RGBA
	}{
		{"config", config, color.RGBA{R: 160, G: 160, B: 160, A: 255}},
		{"create", create, color.RGBA{R: 90, G: 140, B: 200, A: 255}},
		{"node pulls", pull, color.RGBA{R: 220, G: 110, B: 60, A: 255}},
		{"rest of ready", rest, color.RGBA{R: 120, G: 190, B: 110, A: 255}},
	} {
		bars, err := plotter.NewBarChart(s.v, w)
		if err != nil {
			return err
		}
		bars.Horizontal = true
		bars.Color = s.c
		bars.LineStyle.Width = 0
		if prev != nil {
			bars.StackOn(prev)
		}
		p.Add(bars)
		p.Legend.Add(s.name, bars)
		prev = bars
	}
	p.Legend.Top = true
	p.NominalY(labels...)
	return p.Save(8*vg.Inch, vg.Length(len(recs))*0.32*vg.Inch+2*vg.Inch, path)
}

// shortNode drops the cluster name from a node's: "controlplane-1".
func shortNode(n string) string {
	n = strings.TrimPrefix(n, "/")
	for _, role := range []string{"controlplane-", "worker-"} {
		if i := strings.Index(n, role); i >= 0 {
			return n[i:]
		}
	}
	return n
}
