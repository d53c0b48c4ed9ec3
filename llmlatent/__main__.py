from llmlatent.cli import main

raise SystemExit(main())
