from xrayvision.cli import main

raise SystemExit(main())
