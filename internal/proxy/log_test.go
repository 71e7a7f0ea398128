package proxy

import (
	"log/slog"
	"os"
	"testing"
)

// testLogger logs to t.Log with SBX_TEST_LOG=1, else discards (keeps -race
// output readable and avoids logging after a test ended).
func testLogger(tb testing.TB) *slog.Logger {
	if os.Getenv("SBX_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
