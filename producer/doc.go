// Package producer is sendq's HTTP intake. It accepts the body of the Azure
// Logic Apps SMTP connector's "Send Email" action (V1, V2 and V3), checks
// every field, authorises the caller, and answers 202 Accepted only after
// asynq stored the email in Redis. It also serves the status, dead-letter,
// retry and cancel endpoints, and the connector's own operations
// (compat.go: POST /SendEmail, /SendEmailV2, /SendEmailV3 with each
// version's fields, GET /TestConnection).
package producer
