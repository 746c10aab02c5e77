package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/internal/cache"
	"github.com/pullthrough/pullthrough/internal/fleet"
)

func newServe() *cobra.Command {
	var f cacheFlags
	var fc fleet.Config
	var listen, advertise, mode string
	var allow []string
	var open bool
	cmd := &cobra.Command{
		Use:   "serve --s3-endpoint URL --s3-bucket NAME --redis URL --advertise HOST",
		Short: "Run the caches as one instance of a fleet tier: content in S3, coordination in Redis",
		Long: `serve runs the caches for a CI fleet. Any number of instances behind one address share one
S3 bucket (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and one Redis: each blob is fetched
from the origin by one instance, the others stream that instance's download, and stored blobs
are read from the bucket. An instance that dies mid-download is replaced by another (its claim
expires); with Redis unreachable, each instance fetches on its own and pulls still succeed.
Runners point at the tier with cachetest's Upstream.Tiers or any registry mirror setting.
Metrics: /metrics on every cache.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ups, err := f.list()
			if err != nil {
				return err
			}
			m, err := parseMode(mode)
			if err != nil {
				return err
			}
			if advertise == "" || fc.S3Endpoint == "" || fc.Bucket == "" || fc.Redis == "" {
				return usagef("serve needs --s3-endpoint, --s3-bucket, --redis and --advertise")
			}
			if net.ParseIP(listen) == nil {
				return usagef("--listen %q: want an IP address", listen)
			}
			policy := &cache.AccessPolicy{Open: open}
			for _, c := range allow {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					return usagef("--allow %q: want CIDR notation such as 10.0.0.0/8", c)
				}
				policy.Allow = append(policy.Allow, p.Masked())
			}
			root, err := f.root()
			if err != nil {
				return err
			}
			fc.AccessKey, fc.SecretKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
			log := f.logger(cmd)
			fc.Logger = log
			ctx := cmd.Context()
			var servers []*http.Server
			var closers []func()
			defer func() {
				for _, s := range servers {
					sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					_ = s.Shutdown(sctx)
					cancel()
				}
				for i := len(closers) - 1; i >= 0; i-- {
					closers[i]()
				}
			}()
			out := cmd.OutOrStdout()
			for _, u := range ups {
				remote, err := url.Parse(u.URL)
				if err != nil {
					return usagef("--upstream %s=%s: %v", u.Host, u.URL, err)
				}
				ln, err := net.Listen("tcp", net.JoinHostPort(listen, strconv.Itoa(u.Port)))
				if err != nil {
					return fmt.Errorf("upstream %s: %w (--ports-from picks other ports)", u.Host, err)
				}
				cfg := fc
				cfg.Prefix = u.Host + "/"
				cfg.Advertise = "http://" + net.JoinHostPort(advertise, strconv.Itoa(u.Port))
				fl, err := fleet.New(ctx, cfg)
				if err != nil {
					ln.Close()
					return err
				}
				closers = append(closers, func() { fl.Close() })
				c, err := cache.New(ctx, cache.Config{Host: u.Host, Remote: remote, StorageDir: filepath.Join(root, "serve-"+u.Host),
					Mode: cache.Mode(m), Fleet: fl, Access: policy, Logger: log})
				if err != nil {
					ln.Close()
					return err
				}
				closers = append(closers, func() { c.Close() })
				srv := &http.Server{Handler: c, ReadHeaderTimeout: 30 * time.Second}
				servers = append(servers, srv)
				go func() {
					if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
						log.Error("serving", "upstream", u.Host, "error", err)
					}
				}()
				fmt.Fprintf(out, "# %s → %s: serving on %s, advertised as %s\n", u.Host, u.URL, ln.Addr(), cfg.Advertise)
			}
			fmt.Fprintln(out, "# ready")
			<-ctx.Done()
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&fc.S3Endpoint, "s3-endpoint", "", "S3-compatible endpoint, e.g. http://127.0.0.1:7070")
	cmd.Flags().StringVar(&fc.Bucket, "s3-bucket", "", "bucket (must exist)")
	cmd.Flags().StringVar(&fc.Region, "s3-region", "us-east-1", "S3 region")
	cmd.Flags().StringVar(&fc.Redis, "redis", "", "Redis URL, e.g. redis://127.0.0.1:6379/0")
	cmd.Flags().DurationVar(&fc.ClaimTTL, "claim-ttl", 10*time.Second, "how long a download's claim outlives a dead instance")
	cmd.Flags().StringVar(&advertise, "advertise", "", "host or IP the other instances reach this one at")
	cmd.Flags().StringVar(&listen, "listen", "0.0.0.0", "IP address to listen on")
	cmd.Flags().StringVar(&mode, "mode", "online", "online, offline or strict")
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "admit clients from this network too (repeatable), e.g. 10.0.0.0/8")
	cmd.Flags().BoolVar(&open, "open", false, "admit clients from any address")
	return cmd
}
