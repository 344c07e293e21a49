// Package deploy holds sendq's deployment files; its test keeps them honest.
package deploy
