package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/pullthrough/pullthrough/internal/fleet"
)

// FleetConfig makes the caches instances of a fleet tier: content shared in
// an S3 bucket, one download per blob and one fetch per manifest between
// instances, coordinated in Redis. Runners point at the tier with
// Upstream.Tiers or any registry mirror setting.
type FleetConfig struct {
	// S3Endpoint is an S3-compatible endpoint, e.g. http://127.0.0.1:7070.
	S3Endpoint string
	// Bucket must exist.
	Bucket string
	// Region defaults to us-east-1.
	Region string
	// S3Credentials are the bucket's access key and secret:
	// BasicAuth(accessKey, secretKey). They never leave the type.
	S3Credentials Credentials
	// Redis is a redis:// URL; a password in it is never printed.
	Redis string
	// Advertise is the host or IP the other instances reach this one at;
	// each cache is reached there on its own port.
	Advertise string
	// ClaimTTL is how long a claim outlives a dead instance (default 10s).
	ClaimTTL time.Duration
}

// WithFleet joins the fleet tier the config names. It needs WithFixedPorts:
// peers reach an instance's cache at Advertise and the upstream's port.
func WithFleet(cfg FleetConfig) Option {
	return optionFunc(func(s *settings) error {
		if err := cfg.validate(); err != nil {
			return err
		}
		s.fleet = &cfg
		return nil
	})
}

func (f *FleetConfig) validate() error {
	var errs []error
	if u, err := url.Parse(f.S3Endpoint); f.S3Endpoint == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("fleet S3 endpoint %q: want http(s)://host[:port]", redactURL(f.S3Endpoint)))
	}
	if f.Bucket == "" {
		errs = append(errs, errors.New("fleet bucket: want the name of an existing bucket"))
	}
	if u, err := url.Parse(f.Redis); f.Redis == "" || err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
		errs = append(errs, fmt.Errorf("fleet redis %q: want redis://host:port[/db]", redactURL(f.Redis)))
	}
	if f.Advertise == "" || net.ParseIP(f.Advertise) == nil && !validHostname(f.Advertise) {
		errs = append(errs, fmt.Errorf("fleet advertise address %q: want the host name or IP peers reach this instance at", f.Advertise))
	}
	if f.ClaimTTL < 0 {
		errs = append(errs, fmt.Errorf("fleet claim TTL %s: want zero (the default, 10s) or more", f.ClaimTTL))
	}
	return errors.Join(errs...)
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return h != ""
}

// connect joins the fleet for one upstream's cache, advertised on port.
func (f *FleetConfig) connect(ctx context.Context, host string, port int, log *slog.Logger) (*fleet.Fleet, error) {
	return fleet.New(ctx, fleet.Config{
		S3Endpoint: f.S3Endpoint,
		Bucket:     f.Bucket,
		Region:     f.Region,
		AccessKey:  f.S3Credentials.user,
		SecretKey:  f.S3Credentials.password,
		Prefix:     host + "/",
		Redis:      f.Redis,
		Advertise:  "http://" + net.JoinHostPort(f.Advertise, strconv.Itoa(port)),
		ClaimTTL:   f.ClaimTTL,
		Logger:     log,
	})
}

// String never shows the S3 secret or a Redis password.
func (f FleetConfig) String() string {
	return fmt.Sprintf("fleet(s3 %s bucket %s, %s, redis %s, advertise %s)", redactURL(f.S3Endpoint), f.Bucket, f.S3Credentials, redactURL(f.Redis), f.Advertise)
}

// GoString is what %#v prints.
func (f FleetConfig) GoString() string { return "cache.FleetConfig{" + f.String() + "}" }

// Format makes every fmt verb print String.
func (f FleetConfig) Format(s fmt.State, verb rune) {
	formatRedacted(s, verb, f.String(), f.GoString())
}

// LogValue is what slog prints.
func (f FleetConfig) LogValue() slog.Value { return slog.StringValue(f.String()) }
