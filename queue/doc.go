// Package queue is the contract between sendq's intake (package producer) and
// its delivery workers (package worker): the asynq task type and its versioned
// payload, the Redis connection settings shared by both sides, and the status
// record that both sides read and write.
//
// Producer and worker import this package; they never import each other.
package queue
