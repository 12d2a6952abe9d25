from trainer.data.cli import main

raise SystemExit(main())
