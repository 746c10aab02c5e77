package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
)

// upstreamError is a failure to get an answer worth passing on, with the
// status and registry error code the client gets.
type upstreamError struct {
	host   string
	status int
	code   string
	msg    string
	header http.Header // passed on: Retry-After, rate limit headers
	err    error
}

func (e *upstreamError) Error() string { return e.msg }

func (e *upstreamError) Unwrap() error { return e.err }

// transportError says what went wrong reaching an endpoint (nil: the
// origin), and marks it down for a while.
func (u *upstream) transportError(ctx context.Context, ep *endpoint, err error) error {
	if ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
		return err // the caller went away
	}
	if ep == nil {
		ep = u.origin()
	}
	ep.markDown()
	e := &upstreamError{host: u.host, status: http.StatusBadGateway, code: "UNAVAILABLE", err: err}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		e.msg = fmt.Sprintf("upstream %s is unreachable: connection refused", u.host)
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		e.status = http.StatusGatewayTimeout
		e.msg = fmt.Sprintf("upstream %s did not answer in time (header timeout %s): %s", u.host, u.header, u.secrets.redact(rootCause(err)))
	default:
		e.msg = fmt.Sprintf("upstream %s is unreachable: %s", u.host, u.secrets.redact(rootCause(err)))
	}
	return e
}

// rootCause drops url.Error's "Get <url>:" prefix, which repeats the path.
func rootCause(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// statusError turns an upstream answer that is not a success into the error
// the client gets: the upstream's own status and reason for 401, 403, 404 and
// 429, and 502 or 503 (never 500) for upstream failures.
func (u *upstream) statusError(resp *http.Response, what string) *upstreamError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	drain(resp.Body)
	reason := u.secrets.redact(summarize(resp.Status, body))
	e := &upstreamError{host: u.host, status: resp.StatusCode, code: upstreamCode(body)}
	switch s := resp.StatusCode; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		e.msg = fmt.Sprintf("upstream %s refused access to %s: %s", u.host, what, reason)
		u.log.Warn("upstream refused access; check this upstream's credentials", "what", what, "status", resp.Status, "with_credentials", u.creds.any())
	case s == http.StatusNotFound:
		e.msg = fmt.Sprintf("upstream %s: %s not found: %s", u.host, what, reason)
	case s == http.StatusTooManyRequests:
		e.msg = fmt.Sprintf("upstream %s is rate limiting this cache: %s", u.host, reason)
		e.header = http.Header{}
		for k, v := range resp.Header {
			if k == "Retry-After" || strings.HasPrefix(strings.ToLower(k), "ratelimit") {
				e.header[k] = v
			}
		}
	case s >= 500:
		if s != http.StatusServiceUnavailable && s != http.StatusGatewayTimeout {
			e.status = http.StatusBadGateway
		}
		e.msg = fmt.Sprintf("upstream %s failed: %s", u.host, reason)
	default:
		e.status = http.StatusBadGateway
		e.msg = fmt.Sprintf("upstream %s answered %s for %s: %s", u.host, resp.Status, what, reason)
	}
	if e.code == "" {
		e.code = codeFor(e.status)
	}
	return e
}

// summarize is the status and the first error message of a registry error
// body, or the status alone.
func summarize(status string, body []byte) string {
	var b struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(body, &b) == nil && len(b.Errors) > 0 && b.Errors[0].Message != "" {
		return status + ": " + trunc(b.Errors[0].Message)
	}
	return status
}

func upstreamCode(body []byte) string {
	var b struct{ Errors []struct{ Code string } }
	if json.Unmarshal(body, &b) == nil && len(b.Errors) > 0 && codeRE.MatchString(b.Errors[0].Code) {
		return b.Errors[0].Code
	}
	return ""
}

func codeFor(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusForbidden:
		return "DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	}
	return "UNAVAILABLE"
}
