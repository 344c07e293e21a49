package worker

import (
	"fmt"
	"log/slog"
	"os"
)

// AsynqLogger adapts a *slog.Logger to asynq.Logger.
type AsynqLogger struct{ l *slog.Logger }

// NewAsynqLogger returns an asynq.Logger that writes to l.
func NewAsynqLogger(l *slog.Logger) *AsynqLogger {
	return &AsynqLogger{l: l.With("component", "asynq")}
}

// Debug implements asynq.Logger.
func (a *AsynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }

// Info implements asynq.Logger.
func (a *AsynqLogger) Info(args ...any) { a.l.Info(fmt.Sprint(args...)) }

// Warn implements asynq.Logger.
func (a *AsynqLogger) Warn(args ...any) { a.l.Warn(fmt.Sprint(args...)) }

// Error implements asynq.Logger.
func (a *AsynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }

// Fatal implements asynq.Logger: asynq calls it on unrecoverable errors.
func (a *AsynqLogger) Fatal(args ...any) {
	a.l.Error(fmt.Sprint(args...))
	os.Exit(1)
}
