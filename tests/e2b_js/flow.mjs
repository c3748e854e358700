// E2B's JavaScript SDK against this center, unchanged: E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY point here.
// tests/test_e2b.py runs it with Debian's Node.js and checks what it prints (one JSON object).
import { Sandbox } from '@e2b/code-interpreter'

const out = {}
const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { from: 'js' }, envs: { STAGE: 'js' } })
try {
  const printed = []
  await sbx.runCode('x = 41')
  const execution = await sbx.runCode("import os\nprint('hi', os.environ['STAGE'])\nx + 1", {
    onStdout: (message) => printed.push(message.line),
  })
  out.text = execution.text
  out.stdout = printed.join('')
  const failed = await sbx.runCode('1 / 0')
  out.error = failed.error && [failed.error.name, failed.error.value]
  const table = await sbx.runCode("import pandas as pd\npd.DataFrame({'a': [1]})")
  out.html = table.results[0].html.includes('<table')
  const context = await sbx.createCodeContext()
  await sbx.runCode("who = 'context'", { context })
  out.context = (await sbx.runCode('who', { context })).text
  await sbx.files.write('/home/user/js.txt', 'from js')
  out.read = await sbx.files.read('js.txt')
  out.listed = (await sbx.files.list('/home/user')).map((entry) => entry.name).sort()
  const command = await sbx.commands.run('cat js.txt; pwd')
  out.command = [command.exitCode, command.stdout]
  out.running = await sbx.isRunning()
  out.info = (await sbx.getInfo()).metadata
  out.listedSandboxes = (await Sandbox.list().nextItems()).map((item) => item.sandboxId).includes(sbx.sandboxId)
} finally {
  out.killed = await sbx.kill()
}
out.afterKill = await sbx.isRunning()
console.log(JSON.stringify(out))
