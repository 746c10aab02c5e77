// Package fleet lets several pullthrough instances serve as one cache tier
// for a CI fleet: blobs live in S3-compatible object storage, and a claim
// per blob in Redis says which instance downloads it from the origin while
// the others stream that instance's download. Manifests are coordinated the
// same way: one instance fetches, and leaves the manifest (or the upstream's
// failure) in Redis for a short while for the others. It implements
// engine.Fleet.
//
// Storage and coordination are existing distributed engines; nothing here
// stores data of its own. When Redis cannot be reached, Blob returns an
// error and each instance fetches on its own (per-instance behaviour, pulls
// still succeed); when the claim's holder dies, its claim expires within
// ClaimTTL and a waiting instance takes the download over.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"

	"github.com/pullthrough/pullthrough/internal/engine"
)

// Config is one upstream's share of the fleet.
type Config struct {
	S3Endpoint string // e.g. http://127.0.0.1:7070
	Bucket     string
	Region     string // default us-east-1
	AccessKey  string
	SecretKey  string
	// Prefix keeps upstreams apart in one bucket, e.g. "registry.k8s.io/".
	Prefix string
	// Redis is a redis:// URL.
	Redis string
	// Advertise is where the other instances reach this instance's cache
	// for this upstream, e.g. http://10.0.0.5:5001.
	Advertise string
	// ClaimTTL is how long a claim outlives its holder (default 10s).
	ClaimTTL time.Duration
	Logger   *slog.Logger
}

// Fleet is one instance's view of the tier for one upstream.
type Fleet struct {
	cfg  Config
	s3   *s3.Client
	rdb  *redis.Client
	http *http.Client
	log  *slog.Logger

	mu     sync.Mutex
	renew  map[string]context.CancelFunc // by claim key
	closed bool
	wg     sync.WaitGroup
}

var _ engine.Fleet = (*Fleet)(nil)

// New connects to the bucket (which must exist) and to Redis. Redis being
// down is not an error: the instance then works on its own until it is back.
func New(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.ClaimTTL == 0 {
		cfg.ClaimTTL = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.S3Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("fleet: an S3 endpoint and bucket are required")
	}
	if cfg.Advertise == "" {
		return nil, errors.New("fleet: the address peers reach this instance at (advertise) is required")
	}
	opt, err := redis.ParseURL(cfg.Redis)
	if err != nil {
		return nil, fmt.Errorf("fleet: redis URL %q: want redis://host:port[/db]: %v", cfg.Redis, err)
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = time.Second, time.Second, time.Second
	opt.MaxRetries = 0
	f := &Fleet{
		cfg: cfg,
		s3: s3.New(s3.Options{
			BaseEndpoint:               aws.String(cfg.S3Endpoint),
			Region:                     cfg.Region,
			UsePathStyle:               true,
			Credentials:                credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, ""),
			RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
			ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		}),
		rdb:   redis.NewClient(opt),
		http:  &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 10 * time.Second}},
		log:   cfg.Logger,
		renew: map[string]context.CancelFunc{},
	}
	hctx, cancel := context.WithTimeout(ctx, s3Timeout)
	defer cancel()
	if _, err := f.s3.HeadBucket(hctx, &s3.HeadBucketInput{Bucket: aws.String(cfg.Bucket)}); err != nil {
		f.rdb.Close()
		return nil, fmt.Errorf("fleet: bucket %q at %s: %w", cfg.Bucket, cfg.S3Endpoint, err)
	}
	if err := f.rdb.Ping(ctx).Err(); err != nil {
		f.log.Warn("fleet: redis does not answer; each instance fetches on its own until it does", "redis", opt.Addr, "error", err)
	}
	return f, nil
}

func (f *Fleet) key(d digest.Digest) string {
	return f.cfg.Prefix + "blobs/" + string(d.Algorithm()) + "/" + d.Encoded()
}

func (f *Fleet) claimKey(d digest.Digest) string {
	return "pullthrough:claim:" + f.cfg.Prefix + d.String()
}

func (f *Fleet) manifestClaimKey(key string) string {
	return "pullthrough:claim:" + f.cfg.Prefix + "manifest:" + key
}

func (f *Fleet) manifestKey(key string) string {
	return "pullthrough:manifest:" + f.cfg.Prefix + key
}

// Blob implements engine.Fleet.
func (f *Fleet) Blob(ctx context.Context, d digest.Digest) (io.ReadCloser, int64, bool, error) {
	deadline := time.Now().Add(2*f.cfg.ClaimTTL + 5*time.Second)
	for {
		if body, size, ok := f.stored(ctx, d); ok {
			return body, size, true, nil
		}
		won, err := f.rdb.SetNX(ctx, f.claimKey(d), f.cfg.Advertise, f.cfg.ClaimTTL).Result()
		if err != nil {
			return nil, 0, false, fmt.Errorf("claiming %s in redis: %w", d, err)
		}
		if won {
			// The holder may have stored the blob and released its claim
			// between the look at the bucket above and this claim: look
			// once more, or the origin is asked for a blob the fleet has.
			if body, size, ok := f.stored(ctx, d); ok {
				f.release(ctx, f.claimKey(d))
				return body, size, true, nil
			}
			f.keepClaim(f.claimKey(d))
			return nil, 0, false, nil
		}
		owner, err := f.rdb.Get(ctx, f.claimKey(d)).Result()
		if errors.Is(err, redis.Nil) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, 0, false, fmt.Errorf("reading the claim on %s: %w", d, err)
		}
		if owner != f.cfg.Advertise {
			if body, size, ok := f.fromPeer(ctx, owner, d); ok {
				return body, size, true, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, 0, false, fmt.Errorf("the claim on %s is held by %s, which serves no download of it", d, owner)
		}
		select {
		case <-ctx.Done():
			return nil, 0, false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// s3Timeout bounds the wait for the bucket's answer: a hung S3 costs a
// pull this much, then the origin is asked.
const s3Timeout = 5 * time.Second

// cancelBody ends a request's context when its body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func (f *Fleet) stored(ctx context.Context, d digest.Digest) (io.ReadCloser, int64, bool) {
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(s3Timeout, cancel)
	out, err := f.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(f.cfg.Bucket), Key: aws.String(f.key(d))})
	if !t.Stop() && err == nil {
		out.Body.Close()
		err = fmt.Errorf("no answer from the bucket in %s", s3Timeout)
	}
	if err != nil {
		cancel()
		var nk *s3types.NoSuchKey
		if !errors.As(err, &nk) && !strings.Contains(err.Error(), "NotFound") {
			f.log.Warn("fleet: reading shared storage", "digest", d, "error", err)
		}
		return nil, 0, false
	}
	return cancelBody{out.Body, cancel}, aws.ToInt64(out.ContentLength), true
}

// Discard implements engine.Fleet: a damaged object is deleted from the
// bucket, so that the next fetch of the blob goes to the origin.
func (f *Fleet) Discard(ctx context.Context, d digest.Digest) {
	ctx, cancel := context.WithTimeout(ctx, s3Timeout)
	defer cancel()
	if _, err := f.s3.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(f.cfg.Bucket), Key: aws.String(f.key(d))}); err != nil {
		f.log.Warn("fleet: removing a damaged blob from the bucket", "digest", d, "error", err)
		return
	}
	f.log.Warn("fleet: removed a damaged blob from the bucket; it is fetched from the origin again", "digest", d)
}

func (f *Fleet) fromPeer(ctx context.Context, owner string, d digest.Digest) (io.ReadCloser, int64, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(owner, "/")+engine.FillPath+d.String(), nil)
	if err != nil {
		return nil, 0, false
	}
	resp, err := f.http.Do(req)
	if err != nil {
		return nil, 0, false
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, 0, false
	}
	return resp.Body, resp.ContentLength, true
}

var (
	renewScript   = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end`)
	releaseScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)
)

// keepClaim renews this instance's claim until it is released.
func (f *Fleet) keepClaim(claim string) {
	ctx, cancel := context.WithCancel(context.Background())
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		cancel()
		return
	}
	f.renew[claim] = cancel
	f.wg.Add(1)
	f.mu.Unlock()
	go func() {
		defer f.wg.Done()
		t := time.NewTicker(f.cfg.ClaimTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = renewScript.Run(ctx, f.rdb, []string{claim}, f.cfg.Advertise, f.cfg.ClaimTTL.Milliseconds()).Err()
			}
		}
	}()
}

// Done implements engine.Fleet: a verified blob is put in shared storage
// before the claim goes, so an instance that finds no claim finds the blob.
func (f *Fleet) Done(ctx context.Context, d digest.Digest, path string) {
	f.stopRenewing(f.claimKey(d))
	if path != "" {
		if err := f.put(ctx, d, path); err != nil {
			f.log.Warn("fleet: sharing a blob", "digest", d, "error", err)
		}
	}
	f.release(ctx, f.claimKey(d))
}

func (f *Fleet) stopRenewing(claim string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cancel, ok := f.renew[claim]; ok {
		cancel()
		delete(f.renew, claim)
	}
}

func (f *Fleet) release(ctx context.Context, claim string) {
	if err := releaseScript.Run(ctx, f.rdb, []string{claim}, f.cfg.Advertise).Err(); err != nil && !errors.Is(err, redis.Nil) {
		f.log.Warn("fleet: releasing a claim", "claim", claim, "error", err)
	}
}

// Manifest implements engine.Fleet: the record another instance left for key
// in Redis, or the claim to fetch it. While another instance holds the
// claim, it waits (a manifest fetch is bounded; ctx bounds the wait).
func (f *Fleet) Manifest(ctx context.Context, key string) ([]byte, bool, error) {
	claim := f.manifestClaimKey(key)
	for {
		rec, err := f.rdb.Get(ctx, f.manifestKey(key)).Bytes()
		if err == nil {
			return rec, true, nil
		}
		if !errors.Is(err, redis.Nil) {
			return nil, false, fmt.Errorf("reading manifest %s in redis: %w", key, err)
		}
		won, err := f.rdb.SetNX(ctx, claim, f.cfg.Advertise, f.cfg.ClaimTTL).Result()
		if err != nil {
			return nil, false, fmt.Errorf("claiming manifest %s in redis: %w", key, err)
		}
		if won {
			// The holder may have left its record and released the claim
			// between the read above and the claim: look once more.
			if rec, err := f.rdb.Get(ctx, f.manifestKey(key)).Bytes(); err == nil {
				f.release(ctx, claim)
				return rec, true, nil
			}
			f.keepClaim(claim)
			return nil, false, nil
		}
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("waiting for another instance's fetch of manifest %s: %w", key, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// ManifestDone implements engine.Fleet: the record is set before the claim
// goes, so an instance that finds no claim finds the record.
func (f *Fleet) ManifestDone(ctx context.Context, key string, record []byte, ttl time.Duration) {
	claim := f.manifestClaimKey(key)
	f.stopRenewing(claim)
	if record != nil {
		if err := f.rdb.Set(ctx, f.manifestKey(key), record, ttl).Err(); err != nil {
			f.log.Warn("fleet: sharing a manifest", "manifest", key, "error", err)
		}
	}
	f.release(ctx, claim)
}

func (f *Fleet) put(ctx context.Context, d digest.Digest, path string) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*s3Timeout)
	defer cancel()
	_, err = f.s3.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(f.cfg.Bucket), Key: aws.String(f.key(d)), Body: file, ContentLength: aws.Int64(st.Size()),
	})
	return err
}

// Close stops claim renewals (claims then expire) and closes the clients.
func (f *Fleet) Close() error {
	f.mu.Lock()
	f.closed = true
	for d, cancel := range f.renew {
		cancel()
		delete(f.renew, d)
	}
	f.mu.Unlock()
	f.wg.Wait()
	f.http.CloseIdleConnections()
	return f.rdb.Close()
}
