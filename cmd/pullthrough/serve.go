package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

func newServe() *cobra.Command {
	var f cacheFlags
	var fc cache.FleetConfig
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
Runners point at the tier with --tier, cache.Upstream.Tiers or any registry mirror setting.
Metrics: /metrics on every cache.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if advertise == "" || fc.S3Endpoint == "" || fc.Bucket == "" || fc.Redis == "" {
				return usagef("serve needs --s3-endpoint, --s3-bucket, --redis and --advertise")
			}
			m, err := parseMode(mode)
			if err != nil {
				return err
			}
			fc.Advertise = advertise
			fc.S3Credentials = cache.BasicAuth(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"))
			opts, err := f.options(cmd, m)
			if err != nil {
				return err
			}
			if err := checkListen(listen); err != nil {
				return err
			}
			opts = append(opts, cache.WithFixedPorts(), cache.WithListenAddrs(listen), cache.WithFleet(fc))
			if open {
				opts = append(opts, cache.WithOpenAccess())
			}
			if len(allow) > 0 {
				opts = append(opts, cache.WithAllowedClients(allow...))
			}
			startCtx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			set, err := cache.Start(startCtx, opts...)
			cancel()
			if err != nil {
				return startError(err)
			}
			defer set.Close()
			out := cmd.OutOrStdout()
			for _, c := range set.Caches() {
				fmt.Fprintf(out, "# %s → %s: serving on %s:%d, advertised as http://%s:%d\n", c.Host(), c.Upstream().URL, listen, c.Port(), advertise, c.Port())
			}
			fmt.Fprintln(out, "# ready")
			<-cmd.Context().Done()
			return nil
		},
	}
	f.register(cmd)
	f.registerRun(cmd)
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
