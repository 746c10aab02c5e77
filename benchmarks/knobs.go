package benchmarks

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/provisioners"
)

// benchKnobs are the settings of one benchmark run.
type benchKnobs struct {
	// Mbits is the simulated WAN bandwidth in Mbit/s; 0 is unthrottled.
	Mbits float64
	// Latency is added before each upstream response.
	Latency time.Duration
	// Scale multiplies the image sizes; 1 is the real set (~289 MB).
	Scale float64
	// ControlPlanes and Workers shape boot benchmarks.
	ControlPlanes, Workers int
	// TalosVersion is the image set and config contract.
	TalosVersion string
	// Seed makes image content, and so digests, the same on every run.
	Seed uint64
}

// defaultKnobs are the documented defaults: 100 Mbit/s, 30 ms, the full set,
// one control plane and one worker.
func defaultKnobs() benchKnobs {
	return benchKnobs{Mbits: 100, Latency: 30 * time.Millisecond, Scale: 1, ControlPlanes: 1, Workers: 1,
		TalosVersion: provisioners.DefaultTalosVersion, Seed: 1}
}

// knobsFromEnv reads the PULLTHROUGH_BENCH_* variables over the defaults.
func knobsFromEnv() (benchKnobs, error) {
	k := defaultKnobs()
	for name, set := range map[string]func(string) error{
		"PULLTHROUGH_BENCH_MBITS":   func(v string) (err error) { k.Mbits, err = strconv.ParseFloat(v, 64); return },
		"PULLTHROUGH_BENCH_LATENCY": func(v string) (err error) { k.Latency, err = time.ParseDuration(v); return },
		"PULLTHROUGH_BENCH_SCALE":   func(v string) (err error) { k.Scale, err = strconv.ParseFloat(v, 64); return },
		"PULLTHROUGH_BENCH_CP":      func(v string) (err error) { k.ControlPlanes, err = strconv.Atoi(v); return },
		"PULLTHROUGH_BENCH_WORKERS": func(v string) (err error) { k.Workers, err = strconv.Atoi(v); return },
	} {
		if v, ok := os.LookupEnv(name); ok {
			if err := set(v); err != nil {
				return k, fmt.Errorf("%s=%q: %w", name, v, err)
			}
		}
	}
	return k, k.validate()
}

func (k benchKnobs) validate() error {
	switch {
	case k.Mbits < 0:
		return fmt.Errorf("bandwidth %v Mbit/s: want 0 (unthrottled) or more", k.Mbits)
	case k.Latency < 0:
		return fmt.Errorf("latency %v: want 0 or more", k.Latency)
	case k.Scale <= 0:
		return fmt.Errorf("scale %v: want more than 0", k.Scale)
	case k.ControlPlanes < 1:
		return fmt.Errorf("control planes %d: want at least 1", k.ControlPlanes)
	case k.Workers < 0:
		return fmt.Errorf("workers %d: want 0 or more", k.Workers)
	}
	return nil
}

func (k benchKnobs) String() string {
	bw := "unthrottled"
	if k.Mbits > 0 {
		bw = fmt.Sprintf("%g Mbit/s", k.Mbits)
	}
	return fmt.Sprintf("WAN %s, %v latency, scale %g, Talos %s", bw, k.Latency, k.Scale, k.TalosVersion)
}

func (k benchKnobs) upstreamOptions() []fixtures.Option {
	return []fixtures.Option{
		fixtures.WithWAN(int64(k.Mbits*1e6), k.Latency),
		fixtures.WithScale(k.Scale),
		fixtures.WithSeed(k.Seed),
	}
}
