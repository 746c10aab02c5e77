// Command cachebox runs a cache set inside a container on a cluster's own
// Docker network: what provisioners.WithInNetworkCaches starts where nodes
// cannot reach this host (rootless Docker, Docker Desktop, a remote daemon,
// a firewall). It reads its settings as JSON from $PULLTHROUGH_CACHEBOX,
// prints "cachebox ready" once every cache answers, and serves until SIGTERM.
//
// It admits every client: the container is reachable only from the Docker
// networks it is attached to (the cluster's, and the daemon's bridge, where
// the process that started it reads the counters), and publishes no port.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pullthrough/pullthrough/cache"
)

// Settings is the JSON of $PULLTHROUGH_CACHEBOX.
type Settings struct {
	Upstreams []struct {
		Host string `json:"host"`
		URL  string `json:"url"`
		Port int    `json:"port"`
	} `json:"upstreams"`
	Mode    string `json:"mode"`
	Storage string `json:"storage"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "cachebox:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var s Settings
	if err := json.Unmarshal([]byte(os.Getenv("PULLTHROUGH_CACHEBOX")), &s); err != nil {
		return fmt.Errorf("reading $PULLTHROUGH_CACHEBOX: %w", err)
	}
	mode, err := cache.ParseMode(s.Mode)
	if err != nil {
		return err
	}
	var ups []cache.Upstream
	for _, u := range s.Upstreams {
		ups = append(ups, cache.Upstream{Host: u.Host, URL: u.URL, Port: u.Port})
	}
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	set, err := cache.Start(startCtx, cache.WithUpstreams(ups...), cache.WithFixedPorts(), cache.WithListenAll(),
		cache.WithOpenAccess(), cache.WithMode(mode), cache.WithStorageDir(s.Storage),
		cache.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	cancel()
	if err != nil {
		return err
	}
	defer set.Close()
	fmt.Println("cachebox ready")
	<-ctx.Done()
	return nil
}
