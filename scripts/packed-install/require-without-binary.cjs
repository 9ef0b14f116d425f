'use strict'
// Packed-install probe, run in a copy of the install without the platform package: loading
// fd-queue must fail with the loader's own error, not find a binary somewhere else.
try {
  require('fd-queue')
  console.error('fd-queue loaded although its platform package is gone')
  process.exitCode = 1
} catch (error) {
  if (!/Cannot find native binding/.test(error.message)) {
    console.error(`unexpected error: ${error.stack}`)
    process.exitCode = 1
  } else {
    console.log(`require('fd-queue') throws: ${error.message.split('.')[0]}`)
  }
}
