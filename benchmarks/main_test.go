package benchmarks

import (
	"flag"
	"os"
	"testing"

	"github.com/pullthrough/pullthrough/provisioners"
)

var (
	knobs     benchKnobs
	reportDir string
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		runCacheProcess()
		return
	}
	provisioners.LaunchQemuIfAsked()
	k, err := knobsFromEnv()
	if err != nil {
		// A bad knob is a usage error of this test binary.
		os.Stderr.WriteString("benchmarks: " + err.Error() + "\n")
		os.Exit(2)
	}
	flag.Float64Var(&k.Mbits, "pullthrough.bandwidth", k.Mbits, "simulated WAN Mbit/s; 0 = unthrottled")
	flag.DurationVar(&k.Latency, "pullthrough.latency", k.Latency, "simulated WAN latency per request")
	flag.Float64Var(&k.Scale, "pullthrough.scale", k.Scale, "image size scale; 1 = the real ~289 MB set")
	flag.IntVar(&k.ControlPlanes, "pullthrough.cp", k.ControlPlanes, "control planes in boot benchmarks")
	flag.IntVar(&k.Workers, "pullthrough.workers", k.Workers, "workers in boot benchmarks")
	flag.StringVar(&reportDir, "pullthrough.report", "", "write the boot benchmarks' numbers (benchstat's format) and a picture of their phases per node to this directory")
	flag.Parse()
	knobs = k
	code := m.Run()
	if reportDir != "" {
		if err := boots.write(reportDir); err != nil {
			os.Stderr.WriteString("benchmarks: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
