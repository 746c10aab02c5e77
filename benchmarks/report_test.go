package benchmarks

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The report is what benchstat reads and a picture an image viewer opens.
func TestBootReportWritesBenchstatLinesAndAPicture(t *testing.T) {
	var r bootReport
	r.add(
		bootRecord{Bench: "BenchmarkBoot/docker/cold", Cluster: "c1", Node: "/c1-controlplane-1", ConfigS: 0.8, CreateS: 1, ReadyS: 23, PullS: 22.5, UpstreamMB: 282.4},
		bootRecord{Bench: "BenchmarkBoot/docker/cold", Cluster: "c1", Node: "/c1-worker-1", ConfigS: 0.8, CreateS: 1, ReadyS: 23, PullS: 22.9, UpstreamMB: 282.4},
		bootRecord{Bench: "BenchmarkBoot/docker/warm", Cluster: "c2", Node: "/c2-controlplane-1", ConfigS: 0.9, CreateS: 1.1, ReadyS: 0.6, PullS: 0.5},
	)
	dir := t.TempDir()
	require.NoError(t, r.write(dir))
	txt, err := os.ReadFile(filepath.Join(dir, "boot.txt"))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(txt)), "\n")
	require.Len(t, lines, 2, "one line per boot")
	assert.Equal(t, "BenchmarkBoot/docker/cold 1 24000000000 ns/op 24.0000 boot-s/op 0.8000 config-s/op 1.0000 create-s/op 23.0000 ready-s/op 282.40 upstream-MB/op", lines[0])
	svg, err := os.ReadFile(filepath.Join(dir, "boot.svg"))
	require.NoError(t, err)
	assert.Contains(t, string(svg), "<svg")
	assert.Contains(t, string(svg), "controlplane-1")
	png, err := os.ReadFile(filepath.Join(dir, "boot.png"))
	require.NoError(t, err)
	assert.Equal(t, "\x89PNG", string(png[:4]))
}
